"""A client's side of a secure-aggregation FedAvg round over its session with the server.

The four phases of ``splitfed.aggregation.secagg_client`` each travel as one sealed "secagg"
request: this client's round keys, its encrypted key shares for the others, its masked adapters, and
the shares it reveals. The server only ever sees the masked sum; the reply to the last phase is the
weighted average.
"""

from __future__ import annotations

import logging

import torch

from splitfed.aggregation import (
    DEFAULT_SCALE,
    Phase,
    RoundRoster,
    SecAggClient,
    SecAggError,
    majority_threshold,
)
from splitfed.client.remote_trunk import RemoteTrunk
from splitfed.transport import adapter_limits, decode_tensor, encode_int64, pb

log = logging.getLogger(__name__)

ADVERTISE, SHARE, MASKED, REVEAL = Phase.ADVERTISE, Phase.SHARE, Phase.MASKED, Phase.REVEAL


def secure_average(remote: RemoteTrunk, client_id: str, round_index: int, weight: float,
                   state: dict[str, torch.Tensor], scale: float = DEFAULT_SCALE,
                   ) -> tuple[dict[str, torch.Tensor], int]:
    """Run one round; returns (weighted average over the round's surviving clients, their number).
    ``weight`` is this client's claim: the server bounds it by what it observed (the reply to the key
    sharing says how far), and it is masked as min(claim, that).

    Alone in the round, the client gets its own ``state`` back (contributors 1). A round that fails
    (fewer clients than the threshold stayed) raises ``RemoteError`` from the server's answer.
    """
    client = SecAggClient(client_id, None, 2, scale)  # the threshold comes with the roster
    keys = client.advertise()
    first = remote.secagg(pb.SecAggRequest(round=round_index, phase=ADVERTISE, keys=keys))
    if not first.roster:
        return {name: tensor.detach().clone() for name, tensor in state.items()}, 1
    roster = RoundRoster.from_bytes(first.roster)
    clients = len(roster.entries)
    if not majority_threshold(clients) <= first.threshold <= clients:
        raise SecAggError(f"server proposed threshold {first.threshold} for {clients} clients: a strict "
                          "majority is required, or a minority could unmask a client")
    client.threshold = int(first.threshold)
    shares = client.share_keys(roster)
    routed = remote.secagg(pb.SecAggRequest(round=round_index, phase=SHARE, shares=shares))
    client.receive_shares(dict(routed.shares))
    if routed.weight > 0 and weight > routed.weight:  # the server grants what it saw this client train
        log.info("round %d: weight %.6g, bounded by the server's %.6g (the training rows it ran for this "
                 "client since its last round)", round_index, weight, routed.weight)
        weight = float(routed.weight)
    masked = client.mask(state, weight)
    request = pb.SecAggRequest(round=round_index, phase=MASKED, weight=weight)
    for name in sorted(masked):
        request.tensors.add(name=name, tensor=encode_int64(masked[name]))
    lists = remote.secagg(request)
    revealed = client.unmask_shares(list(lists.survivors), list(lists.dropped))
    final = remote.secagg(pb.SecAggRequest(round=round_index, phase=REVEAL, shares=revealed))
    limits = adapter_limits()
    average = {item.name: decode_tensor(item.tensor, limits, tuple(state[item.name].shape))
               for item in final.tensors if item.name in state}
    if set(average) != set(state):
        raise RuntimeError("the server's average does not carry this client's adapter weights")
    if lists.dropped:
        log.info("round %d: %s dropped out; averaged over the %d others", round_index,
                 ", ".join(lists.dropped), final.contributors)
    return average, int(final.contributors)
