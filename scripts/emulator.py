"""The local AWS emulator: moto's server, corrected where moto departs from AWS in ways that matter here.

`make run` and the end-to-end tests start it; the in-process tests apply the same corrections.

    python -m scripts.emulator --host 127.0.0.1 --port 5000
"""

from __future__ import annotations

import argparse
import functools
import threading
from typing import Any


def apply_fixes() -> None:
    """Make moto honour `setAsActive=false` on CreateCertificateFromCsr, and answer one call at a time.

    moto reads the flag from the query string as the text "false", which is truthy, so it creates the
    certificate ACTIVE. AWS creates it INACTIVE, and the portal relies on that to activate only after
    the policy and thing are attached.

    moto's backends are plain dicts shared by every request, with no lock: a DescribeThing iterating the
    things while another thread's CreateThing adds one fails with "OrderedDict mutated during iteration"
    (a 500 from "AWS"), which AWS never does. Concurrent vends, in-process or against the emulator's
    threaded server, would meet it; each call is handled under one lock instead.
    """
    from moto.core.responses import BaseResponse
    from moto.iot.models import IoTBackend

    original = IoTBackend.create_certificate_from_csr
    if getattr(original, "_cvm_fixed", False):
        return

    dispatch = BaseResponse._dispatch
    one_at_a_time = threading.RLock()

    @functools.wraps(dispatch)
    def locked_dispatch(self: Any, *args: Any, **kwargs: Any) -> Any:
        with one_at_a_time:
            return dispatch(self, *args, **kwargs)

    BaseResponse._dispatch = locked_dispatch  # type: ignore[method-assign]

    @functools.wraps(original)
    def create_certificate_from_csr(self: Any, csr: str, set_as_active: Any) -> Any:
        return original(self, csr, set_as_active=str(set_as_active).lower() == "true")

    create_certificate_from_csr._cvm_fixed = True  # type: ignore[attr-defined]
    IoTBackend.create_certificate_from_csr = create_certificate_from_csr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    apply_fixes()
    from moto.server import main as moto_main

    moto_main(["--host", args.host, "--port", str(args.port)])


if __name__ == "__main__":
    main()
