"""Federated averaging of adapters, plain or under secure aggregation.

* ``fedavg.py``: the weighted mean itself.
* ``base.py``: ``RoundAggregation``, the server's one interface to a round, and ``make_rounds``.
* ``plain_rounds.py`` and ``secure_rounds.py``: its two implementations on the server.
* ``secagg_client.py``, ``secagg_server.py``, ``secagg_round.py``: the secure-aggregation protocol
  (Bonawitz et al., CCS 2017) as pure state machines, testable in memory (``run_round_in_memory``);
  ``shamir.py`` and ``fixed_point.py`` its arithmetic. Its cryptography (keys, the mask stream, sealed
  shares) lives in ``splitfed.security.masking``, so that only ``security`` imports ``cryptography``.

The client's wire side is ``splitfed.client.secure_aggregation`` and ``splitfed.client.link``.
"""

from splitfed.aggregation.base import ROUND_AGGREGATIONS, RoundAggregation, make_rounds, rounds_status
from splitfed.aggregation.fedavg import weighted_average
from splitfed.aggregation.fixed_point import DEFAULT_SCALE
from splitfed.aggregation.plain_rounds import PLAIN_PHASE, AggregationError, PlainRounds
from splitfed.aggregation.secagg_client import SecAggClient
from splitfed.aggregation.secagg_round import Phase, RoundRoster, majority_threshold
from splitfed.aggregation.secagg_server import SecAggServer, run_round_in_memory
from splitfed.aggregation.secure_rounds import SecureRounds
from splitfed.security.errors import SecAggError

__all__ = [
    "DEFAULT_SCALE",
    "PLAIN_PHASE",
    "ROUND_AGGREGATIONS",
    "AggregationError",
    "Phase",
    "PlainRounds",
    "RoundAggregation",
    "RoundRoster",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "SecureRounds",
    "make_rounds",
    "majority_threshold",
    "rounds_status",
    "run_round_in_memory",
    "weighted_average",
]
