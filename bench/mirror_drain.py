"""The drain rate the portal itself sustains (`mirror` benchmark), in a process of its own.

Leasing and marking outbox rows done, with the DynamoDB write replaced by a no-op. Prints one JSON line.

    DJANGO_SETTINGS_MODULE=cvm_portal.settings python -m bench.mirror_drain CHANGES
"""

from __future__ import annotations

import json
import sys
import time

import django


def measure(changes: int) -> dict[str, float]:
    from provisioning import aws, mirror, services

    aws.association_put = lambda **_: True
    rows = [services.ImportRow(line=2, serial=f"OWN-{i:06d}", product="b") for i in range(changes)]
    services.devices_import(rows=rows, actor="b")
    start = time.perf_counter()
    while mirror.outbox_drain(batch_size=200).handled:
        pass
    return {"rate": changes / (time.perf_counter() - start)}


if __name__ == "__main__":
    django.setup()
    print(json.dumps(measure(int(sys.argv[1]))))
