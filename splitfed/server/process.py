"""The trunk server process: load the trunk, serve it over gRPC until stopped, save its adapter."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from splitfed.checkpoint import CheckpointError
from splitfed.layout import Layout
from splitfed.models import hidden_size, init_adapter
from splitfed.models.base_identity import base_id
from splitfed.models.devices import resolve_device
from splitfed.models.party import load_server_parts
from splitfed.models.placement import DTYPES, place_trunk
from splitfed.observability import peak_rss_bytes, write_status
from splitfed.security import AllowList, Identity, ServerHandshake
from splitfed.server.auto_mode import choose_mode, estimate_batch_bytes, measure_capacity
from splitfed.server.compute import single_threaded_torch
from splitfed.server.modes import MODES, TwoPartMode
from splitfed.server.service_state import restore_service, service_checkpoint
from splitfed.server.settings import ServerSettings
from splitfed.server.trunk_service import ServiceLimits, TrunkService
from splitfed.server.trusted_slice import TrustedSlice
from splitfed.transport.admission import FrontDoorLimits
from splitfed.transport.server import serve

log = logging.getLogger(__name__)


def trusted_slice(settings: ServerSettings) -> TrustedSlice:
    """The component that holds the sealing key and persists the trunk state (sealed if configured)."""
    return TrustedSlice(settings.sealing, settings.checkpoint_dir or settings.output / "checkpoints")


def build_service(settings: ServerSettings, slice_: TrustedSlice | None = None) -> TrunkService:
    """The trunk (frozen base, trainable adapter) behind authenticated, encrypted sessions."""
    loaded = load_server_parts(settings.model, settings.partition.partition(), settings.partition.layout,
                               DTYPES[settings.dtype])
    split = loaded.split
    first_block_max, end_block_min = partition_range(settings, loaded.num_layers)
    init_adapter(split.trunk, settings.adapter, settings.seed)
    if settings.devices:
        placement = place_trunk(split.trunk, settings.devices)
        log.info("trunk placed over %s: %s", ", ".join(settings.devices),
                 ", ".join(f"block {block} on {device}" for block, device in sorted(placement.items())))
    elif (device := resolve_device(settings.device)).type != "cpu":
        place_trunk(split.trunk, [str(device)])  # hidden states arrive on the CPU and move to it
        log.info("trunk on %s", device)
    if settings.trunk_adapter is not None:
        slice_ = slice_ or trusted_slice(settings)
        slice_.load_trunk(split.trunk, settings.trunk_adapter)
        log.info("trunk adapter loaded from %s", settings.trunk_adapter)
    identity = Identity.load(settings.identity)
    allowlist = AllowList.load(settings.allowlist)
    log.info("trunk: %s blocks [%d:%d]; %d client(s) enrolled: %s", settings.model,
             split.trunk.layer_indices[0], split.trunk.layer_indices[-1] + 1, len(allowlist),
             ", ".join(allowlist.names()))
    limits = ServiceLimits(max_batch=settings.max_batch, max_length=settings.max_length,
                           dtypes=tuple(dict.fromkeys(settings.wire_codecs)),
                           turn_timeout_s=settings.turn_timeout_s, step_timeout_s=settings.step_timeout_s,
                           session_ttl_s=settings.session_ttl_s,
                           generation_budget_bytes=int(settings.generation_memory_mb * 2**20),
                           generation_ttl_s=settings.generation_ttl_s,
                           generation_streams=settings.generation_streams,
                           requests_in_flight=settings.front_door.requests_in_flight,
                           requests_per_s=settings.front_door.requests_per_s,
                           request_burst=settings.front_door.request_burst,
                           first_block_max=first_block_max, end_block_min=end_block_min,
                           step_deadline_floor_s=settings.fair_use.step_deadline_floor_s,
                           step_deadline_factor=settings.fair_use.step_deadline_factor,
                           held_steps_suspend=settings.fair_use.held_steps_suspend,
                           held_steps_window_s=settings.fair_use.held_steps_window_s,
                           suspension_s=settings.fair_use.suspension_s,
                           round_straggler_s=settings.secagg_straggler_s)
    if settings.mode != "sequential" and (settings.partition.layout == Layout.TWO_PART or settings.sparse):
        raise ValueError(f"the two-part layout and sparse fine-tuning run in sequential mode only, not "
                         f"{settings.mode}")
    if settings.partition.layout == Layout.TWO_PART:
        name = TwoPartMode.name
    else:
        if settings.mode == "auto":
            settings = _resolve_auto(settings, split.trunk, len(settings.roster or allowlist.names()))
            if settings.mode == "client-batch" and settings.partition.ranged:
                log.info("mode auto -> sequential: client-batch runs one partition, and clients pick theirs")
                settings = settings.model_copy(update={"mode": "sequential"})
        name = settings.mode
    mode = MODES[name].from_settings(settings, split)
    service = TrunkService(mode, ServerHandshake(identity, allowlist), limits,
                           aggregation=settings.aggregation, secagg_threshold=settings.secagg_threshold,
                           max_norm_ratio=settings.aggregation_max_norm_ratio, base_id=base_id(loaded.source),
                           gradient_guard=settings.gradient_guard,
                           robust_aggregation=settings.robust_aggregation)
    service.load_report = loaded.report.to_json()
    return service


def partition_range(settings: ServerSettings, blocks: int) -> tuple[int, int]:
    """(latest trunk start, earliest trunk end) a client may choose; (0, 0) for one partition. Refuses
    a range that could leave the trunk no block."""
    partition = settings.partition
    if not partition.ranged:
        return 0, 0
    head_max, tail_max = partition.largest_head, partition.largest_tail
    if head_max + tail_max >= blocks:
        raise ValueError(f"partition: a client keeping head {head_max} and tail {tail_max} blocks would "
                         f"leave the server none of the model's {blocks}: lower head_max or tail_max")
    log.info("clients pick their partition: head %d..%d, tail %d..%d (the trunk holds blocks [%d:%d])",
             partition.head, head_max, partition.tail, tail_max, partition.head, blocks - partition.tail)
    return head_max, blocks - tail_max


def rpc_workers(settings: ServerSettings) -> int:
    """Request threads: as set, or enough for every enrolled client to hold one waiting request (its
    turn, a round's barrier) and one more, plus spare threads for handshakes and backwards."""
    if settings.rpc_workers is not None:
        return settings.rpc_workers
    return max(16, 2 * len(AllowList.load(settings.allowlist)) + 8)


def _resolve_auto(settings: ServerSettings, trunk, clients: int) -> ServerSettings:
    adapter_bytes = sum(p.numel() * p.element_size() for p in trunk.parameters() if p.requires_grad)
    hidden = hidden_size(trunk.config)
    choice = choose_mode(clients, measure_capacity(), sub_server_bytes=3 * adapter_bytes,
                         batch_bytes_per_client=estimate_batch_bytes(hidden, len(trunk.layer_indices)))
    log.info("mode auto -> %s: %s", choice.mode, choice.reason)
    return settings.model_copy(update={"mode": choice.mode, "sub_servers": choice.sub_servers})


def _front_door(settings: ServerSettings) -> FrontDoorLimits:
    door = settings.front_door
    return FrontDoorLimits(unauthenticated_streams=door.unauthenticated_streams,
                           unauthenticated_per_peer=door.unauthenticated_per_peer,
                           first_message_s=door.first_message_timeout_s, idle_s=door.stream_idle_timeout_s,
                           handshakes_per_s=door.handshakes_per_s, handshake_burst=door.handshake_burst)


def _tls(settings: ServerSettings) -> tuple[bytes, bytes] | None:
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("give both tls_cert and tls_key, or neither")
    return settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()


def _client_certificates(path: Path | None) -> bytes | None:
    """The PEM certificates of the clients allowed by mutual TLS (a file, or every .pem in a folder)."""
    if path is None:
        return None
    files = sorted(path.glob("*.pem")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"no client certificates (*.pem) in {path}")
    return b"".join(file.read_bytes() for file in files)


def run_server(settings: ServerSettings, stop: threading.Event | None = None) -> TrunkService:
    """Serve until ``stop`` is set, SIGTERM/SIGINT arrives, or (with ``exit_when_done``) every roster
    client has finished; then save the trunk adapter under ``settings.output``."""
    stop = stop or threading.Event()
    slice_ = trusted_slice(settings)
    service = build_service(settings, slice_)
    store = slice_.checkpoints
    if settings.resume:
        checkpoint = store.latest()
        if checkpoint is None:
            log.info("no checkpoint in %s: starting from the beginning", store.directory)
        else:
            restore_service(service, checkpoint)
            log.info("resumed from %s: %d trunk steps, client progress %s", checkpoint.path, service.steps,
                     checkpoint.meta["progress"])

    def save_checkpoint(quiet_service: TrunkService) -> None:
        try:
            store.save(service_checkpoint(quiet_service))
        except CheckpointError as error:
            log.error("%s", error)

    if settings.checkpoint_every:
        def periodic(quiet_service: TrunkService) -> None:
            if quiet_service.steps % settings.checkpoint_every == 0:
                save_checkpoint(quiet_service)

        service.after_step = periodic
    workers = rpc_workers(settings)
    log.info("%d request threads", workers)
    server, port = serve(service, settings.listen, _tls(settings), settings.insecure_loopback,
                         max_message_bytes=service.limits.max_message_bytes, workers=workers,
                         client_certificates=_client_certificates(settings.tls_client_certs),
                         thread_initializer=single_threaded_torch, front_door=_front_door(settings))
    if settings.port_file is not None:
        _write_atomically(settings.port_file, f"{port}\n")
    previous = _install_signal_handlers(stop)
    log.info("serving the trunk on port %d; stop with Ctrl-C", port)
    reported = 0
    try:
        while not stop.wait(0.5):
            service.reap()
            write_status(settings.output, {**service.status(), "port": port, "model": settings.model})
            if service.steps >= reported + 10:
                reported = service.steps
                log.info("trunk steps: %d; sessions: %s", reported, ", ".join(service.sessions()) or "none")
            if settings.exit_when_done and service.scheduler.roster_finished():
                log.info("every roster client has finished")
                break
    finally:
        quiet = service.drain(settings.drain_timeout_s)
        if quiet:
            save_checkpoint(service)
            log.info("checkpoint after %d trunk steps in %s", service.steps, store.directory)
        write_status(settings.output, {**service.status(), "port": port, "model": settings.model,
                                       "stopped": True})
        server.stop(grace=2).wait()
        _restore_signal_handlers(previous)
        service.finish()
        path = slice_.save_trunk(service.mode.part, settings.output / "trunk", base_model=settings.model,
                                 step=service.steps)
        log.info("trunk adapter after %d steps saved to %s", service.steps, path)
        service.close()
        write_status(settings.output, {**service.status(), "port": port, "model": settings.model,
                                       "stopped": True, "peak_rss_bytes": peak_rss_bytes()})
    return service


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(text)
    staging.replace(path)


def _install_signal_handlers(stop: threading.Event) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, lambda *_: stop.set())
    return previous


def _restore_signal_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
