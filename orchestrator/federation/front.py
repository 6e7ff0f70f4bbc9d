"""The SuperLink's front: what the network reaches of the coordinator, hospitals' routes only.

Flower 1.42 serves its Fleet API (hospitals), Control API (register nodes, submit, list and stop
runs) and Runtime API (the ServerApp) on one HTTP port, and its open-source SuperLink does not
authenticate Control API callers: anyone who could reach that port could register a key, list the
runs and nodes, or submit and stop runs. So the SuperLink listens on 127.0.0.1 only (`--control-port`),
where the coordinator's operators reach it, and nginx, a well-kept TLS proxy, listens on the address
hospitals dial with the consortium's certificate and forwards only the Fleet API routes a
registered SuperNode uses (`FLEET_ROUTES`: activate, heartbeat, pull and push messages and objects,
the run and its app). Everything else, node registration through the Fleet API included, is
answered 403 there.

nginx is the coordinator host's (Debian/Ubuntu: `apt-get install nginx`); it runs
in the foreground under `STATE/front/`, its configuration written there, its logs beside it.
"""
from __future__ import annotations

import getpass
import os
import shutil
from pathlib import Path

from orchestrator.spec.errors import UserError

# what a registered SuperNode calls (flwr.supernode.fleet_http_client); not register/unregister-node
FLEET_ROUTES = ("activate-node", "deactivate-node", "send-node-heartbeat", "pull-messages", "push-messages",
                "get-run", "get-fab", "push-object", "pull-object", "confirm-message-received")
REFUSED = "this address serves registered hospitals only (the Fleet API); the coordinator's operators use the " \
          "SuperLink's control port on the coordinator host"


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                           if os.access(p, os.X_OK)), None)
    if found is None:
        raise UserError("federation superlink", [
            "the SuperLink's TLS front needs nginx on this host (Debian/Ubuntu: apt-get install nginx); "
            "it lets hospitals reach only the routes they need, and keeps registering, submitting and "
            "listing runs to this host"])
    return found


def _listen(host: str, port: int) -> str:
    return f"[{host.strip('[]')}]:{port}" if ":" in host.strip("[]") else f"{host}:{port}"


def config(host: str, port: int, backend_port: int, certs: Path, state: Path) -> str:
    """nginx.conf: TLS on HOST:PORT with the SuperLink's certificate, the Fleet routes proxied to
    the SuperLink on 127.0.0.1:`backend_port` (TLS, verified against the consortium's CA)."""
    tmp = state / "tmp"
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""   # a root master's workers stay root's
    routes = "|".join(FLEET_ROUTES)
    return f"""# written by `consortium federation superlink` (orchestrator/federation/front.py)
{user}worker_processes 1;
daemon off;
pid {state / "nginx.pid"};
error_log {state / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    access_log {state / "access.log"};
    client_body_temp_path {tmp / "body"};
    proxy_temp_path {tmp / "proxy"};
    fastcgi_temp_path {tmp / "fastcgi"};
    uwsgi_temp_path {tmp / "uwsgi"};
    scgi_temp_path {tmp / "scgi"};
    client_max_body_size 0;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;
    underscores_in_headers on;
    server {{
        listen {_listen(host, port)} ssl;
        ssl_certificate {certs / "superlink.pem"};
        ssl_certificate_key {certs / "superlink.key"};
        ssl_protocols TLSv1.2 TLSv1.3;
        location ~ ^/v1/fleet/({routes})$ {{
            proxy_pass https://127.0.0.1:{backend_port};
            proxy_http_version 1.1;
            proxy_ssl_trusted_certificate {certs / "ca.pem"};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
        }}
        location / {{
            default_type text/plain;
            return 403 "{REFUSED}\\n";
        }}
    }}
}}
"""


def argv(host: str, port: int, backend_port: int, certs: Path, state: Path) -> list[str]:
    """nginx in the foreground with the front's configuration under `state` (written now)."""
    binary = nginx_binary()
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (state / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    conf = state / "nginx.conf"
    conf.write_text(config(host, port, backend_port, certs.resolve(), state.resolve()))
    return [binary, "-p", str(state.resolve()), "-c", str(conf.resolve()), "-e", str((state / "error.log").resolve())]
