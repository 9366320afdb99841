"""deploy/nginx's server configuration, rendered and run locally: the proxy test and the benchmarks.

The proxy runs the very server configuration of deploy/nginx/templates (rendered as the nginx image
renders it), inside a minimal main nginx.conf of the caller's own. Needs Debian's nginx
(`apt-get install nginx`; .ci/run installs it).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from scripts.local_tls import TlsFiles
from scripts.processes import ROOT

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
TEMPLATES = ROOT / "deploy" / "nginx" / "templates"
# deploy/compose.yaml's values for the proxy's own limits.
DEVICE_CALLS_PER_SECOND, DEVICE_CALLS_BURST = 100, 200


def render(template: Path, values: dict[str, str]) -> str:
    """What the nginx image's entrypoint does: ${NAME} of the environment replaced, nginx's $vars kept."""
    text = template.read_text()
    for name, value in values.items():
        text = text.replace("${" + name + "}", value)
    if unrendered := re.search(r"\$\{CVM_\w+\}", text):
        raise ValueError(f"a template variable was left unrendered: {unrendered.group()}")
    return text


def write_nginx_conf(directory: Path, values: dict[str, str]) -> Path:
    """A main nginx.conf with everything under `directory`, the portal's server config included."""
    included = directory / "conf.d"
    included.mkdir(exist_ok=True)
    for template in TEMPLATES.glob("*.template"):
        (included / template.name.removesuffix(".template")).write_text(render(template, values))
    temp = "\n".join(
        f"    {kind}_temp_path {directory / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # Run as root (CI), nginx would hand its workers to `nobody`, who cannot enter pytest's 0700 directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = directory / "nginx.conf"
    conf.write_text(
        f"{user}worker_processes 1;\npid {directory / 'nginx.pid'};\nerror_log {directory / 'error.log'} notice;\n"
        "events { worker_connections 1024; }\n"
        f"http {{\n    access_log {directory / 'access.log'};\n{temp}\n"
        f"    include {included}/*.conf;\n}}\n"
    )
    return conf


def nginx_values(
    tls: TlsFiles,
    *,
    https_port: int,
    http_port: int,
    upstream: str,
    device_calls_per_second: int = DEVICE_CALLS_PER_SECOND,
    device_calls_burst: int = DEVICE_CALLS_BURST,
) -> dict[str, str]:
    return {
        "CVM_SERVER_NAME": "127.0.0.1 localhost",
        "CVM_PORTAL_UPSTREAM": upstream,
        "CVM_HTTPS_PORT": f"127.0.0.1:{https_port}",
        "CVM_HTTP_PORT": f"127.0.0.1:{http_port}",
        "CVM_TLS_CERT": str(tls.server_cert),
        "CVM_TLS_KEY": str(tls.server_key),
        "CVM_DEVICE_CALLS_PER_SECOND": str(device_calls_per_second),
        "CVM_DEVICE_CALLS_BURST": str(device_calls_burst),
    }


def nginx_command(directory: Path, conf: Path) -> list[str]:
    """nginx in the foreground, its files under `directory`."""
    assert NGINX is not None, "nginx is not installed (apt-get install nginx)"
    return [NGINX, "-p", str(directory), "-c", str(conf), "-e", str(directory / "error.log"), "-g", "daemon off;"]
