"""KerasTuner's distributed search: which role this process plays, and the chief's oracle server.

The only module that uses KerasTuner's private ``keras_tuner.src.distribute`` (it has no public
server loop with a short poll); ``tests/test_distributed_search.py`` fails when KerasTuner changes it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from inat_keras.errors import UserError

# -- distributed mode -------------------------------------------------------------------------


def tuner_role(environ: dict[str, str] | os._Environ = os.environ) -> str:
    """ "single", or KerasTuner's "chief" (serves the oracle) or "worker" (runs trials), from its variables."""
    if "KERASTUNER_ORACLE_IP" not in environ:
        return "single"
    missing = [name for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID") if not environ.get(name)]
    if missing:
        raise UserError(
            f"KERASTUNER_ORACLE_IP is set but {' and '.join(missing)} not: a distributed search needs all three "
            f"(the chief's KERASTUNER_TUNER_ID is 'chief', the workers' tuner0, tuner1, ...)"
        )
    return "chief" if "chief" in environ["KERASTUNER_TUNER_ID"] else "worker"


def serve_oracle(oracle: Any, poll_seconds: float = 0.2) -> None:
    """KerasTuner's chief server (``oracle_chief.start_server``), polling for the end every 0.2 s.

    KerasTuner's own loop sleeps 20 s between checks once the first worker is told to stop.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute.oracle_chief import OracleServicer, exit_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"
    if not server.add_insecure_port(address):
        raise UserError(f"cannot serve the oracle on {address}: pick a free KERASTUNER_ORACLE_PORT")
    server.start()
    try:
        while not (servicer.stop_triggered and exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=1)
