"""`consortium federation ...`: make the keys, start the SuperLink and the hospitals' SuperNodes,
admit hospitals, and try a whole federation on one machine (`poc`). deploy/federation/README.md
walks a hospital's IT team through these commands across machines."""
from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.app import app
from orchestrator.federation.rejoin import NOT_REGISTERED

fed_app = typer.Typer(no_args_is_help=True, help="A real federation: Flower SuperLink and SuperNodes with TLS and "
                                                 "authenticated hospitals.")

INSECURE_WARNING = ("WARNING: --insecure: no TLS and no hospital authentication. Every model update travels in "
                    "the clear and any process that can reach the port can join. Use it only for a local test.")


def _say(msg: str, err: bool = False) -> None:
    print(msg, file=sys.stderr if err else sys.stdout, flush=True)


def _user_error(source: str, problem: str) -> None:
    _say(f"consortium: {source}: {problem}", err=True)
    raise typer.Exit(2)


@fed_app.command()
def certs(directory: Path = typer.Argument(..., help="Where to write ca.pem, superlink.pem/.key, hospitals/NAME[.pub]"),
          san: list[str] = typer.Option(..., "--san", help="An address hospitals dial (IP or DNS name); repeat"),
          hospital: list[str] = typer.Option([], "--hospital", help="A hospital's name; one key pair each; repeat"),
          days: int = typer.Option(365, help="Validity of the certificates")) -> None:
    """Make the consortium's CA, the SuperLink's TLS certificate and one key pair per hospital."""
    from orchestrator.federation.certs import make_certs

    files = make_certs(directory, san, hospital, days)
    _say(f"CA           {files.ca}  (give it to every hospital; keep {files.ca_key.name} offline)")
    _say(f"SuperLink    {files.cert}, {files.key}  (SANs: {', '.join([*san, '127.0.0.1', 'localhost'])})")
    for name, (private, public) in files.hospitals.items():
        _say(f"hospital     {name}: {private} (stays at the hospital), {public} (register it)")


@fed_app.command()
def keygen(name: str = typer.Argument(..., help="This hospital's name"),
           directory: Path = typer.Option(Path("."), "--dir", help="Where to write NAME and NAME.pub")) -> None:
    """Make this hospital's key pair here: NAME stays at the hospital, NAME.pub goes to the coordinator."""
    from orchestrator.federation.certs import hospital_key

    private, public = hospital_key(directory, name)
    _say(f"private key  {private}  (stays here: `federation supernode --key {private}`)")
    _say(f"public key   {public}  (send it to the coordinator: `federation register {public.name}`)")


def _foreground(daemon, said: dict | None = None) -> None:
    """Follow a daemon (and its companions: the SuperLink's front) until one ends or we are stopped
    (Ctrl-C / SIGTERM stop them all). `said`: exit code -> (the option to blame, the prefix of the
    log line that says why): a user's mistake, exit 2."""
    import time

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    everyone = [daemon, *daemon.companions]
    try:
        while all(d.proc.poll() is None for d in everyone):
            time.sleep(0.5)
    except KeyboardInterrupt:
        daemon.stop()
        _say(f"consortium: {daemon.name} stopped")
        raise typer.Exit(130)
    ended = next(d for d in everyone if d.proc.poll() is not None)
    daemon.stop()
    text = ended.log.read_text() if ended.log.exists() else ""
    if said and ended.proc.returncode in said:
        source, prefix = said[ended.proc.returncode]
        why = [line[len(prefix):] for line in text.splitlines() if line.startswith(prefix)]
        _user_error(source, why[-1] if why else f"see {ended.log}")
    tail = text[-3000:]
    _say(f"consortium: {ended.name} exited with code {ended.proc.returncode}; its log ({ended.log}):\n{tail}",
         err=True)
    raise typer.Exit(1)


@fed_app.command()
def superlink(certs_dir: Optional[Path] = typer.Option(None, "--certs", help="Directory from `federation certs`"),
              host: str = typer.Option("0.0.0.0", help="Address the hospitals reach (the front listens here)"),
              port: int = typer.Option(9093, help="The hospitals' port: the Fleet API only, behind a TLS front"),
              control_port: int = typer.Option(9099, help="The SuperLink's own port, on 127.0.0.1 only: register "
                                                          "hospitals and submit jobs from this host through it"),
              state: Path = typer.Option(Path("superlink-state"), help="State database and logs (registrations "
                                                                        "survive a restart)"),
              insecure: bool = typer.Option(False, help="No TLS, no authentication (local tests only)")) -> None:
    """Start the coordinator's SuperLink (TLS + SuperNode authentication by default) in the foreground:
    hospitals reach HOST:PORT, which serves them only; operators use 127.0.0.1:CONTROL_PORT here."""
    from orchestrator.federation.daemons import start_superlink
    from orchestrator.spec.errors import UserError

    if insecure:
        _say(INSECURE_WARNING, err=True)
    elif certs_dir is None or not (certs_dir / "superlink.pem").is_file():
        _user_error("--certs", "needs the directory holding ca.pem, superlink.pem and superlink.key "
                               "(`consortium federation certs DIR --san ADDRESS`), or --insecure")
    try:
        certs = None if insecure or certs_dir is None else certs_dir.resolve()
        d = start_superlink(host, port, state.resolve(), certs, control_port=None if insecure else control_port)
    except UserError as exc:
        _user_error(exc.source, "; ".join(exc.problems))
    except RuntimeError as exc:   # did not bind: an address not on this host, a port in use
        _user_error(f"--host {host} --port {port}", f"the SuperLink did not start listening: {exc}")
    if insecure:
        _say(f"SuperLink on {host}:{port} (log: {d.log}); Ctrl-C stops it")
    else:
        _say(f"SuperLink: hospitals reach {host}:{port} (TLS, Fleet API only; front log: {d.companions[0].log}); "
             f"operators on this host use 127.0.0.1:{control_port} (log: {d.log}); Ctrl-C stops both")
    _foreground(d)


@fed_app.command("register")
def register_cmd(public_keys: list[Path] = typer.Argument(..., help="Hospitals' NAME.pub files (one or more)"),
                 superlink_address: str = typer.Option(..., "--superlink", help="HOST:PORT of the SuperLink"),
                 ca: Path = typer.Option(..., help="The consortium's ca.pem"),
                 name: Optional[str] = typer.Option(None, help="The hospital's name, for one key "
                                                                "(default: each key's file name)"),
                 wait: float = typer.Option(0.0, help="Seconds to wait for the SuperLink to answer (0: no wait)")) -> None:
    """Admit hospitals: register their public keys with the SuperLink."""
    import time

    from orchestrator.federation.flower import Link, register

    public_keys = [k.resolve() for k in public_keys]
    ca = ca.resolve()
    if name and len(public_keys) > 1:
        _user_error("--name", "names one hospital: give one key with it (each key's file name names its hospital)")
    for key in public_keys:
        if not key.is_file():
            _user_error(str(key), "no such file: expected a hospital's OpenSSH public key (NAME.pub)")
    link = Link(superlink_address, ca)
    deadline = time.monotonic() + wait
    while True:
        try:
            link.check()
            break
        except Exception as exc:  # noqa: BLE001 - said plainly, exit 2
            if time.monotonic() >= deadline:
                _user_error(superlink_address, str(exc))
            time.sleep(1.0)
    for key in public_keys:
        try:
            node = register(link, key, name or key.stem)
        except Exception as exc:  # noqa: BLE001
            _user_error(str(key), str(exc))
        _say(f"registered {key.stem} as node {node}")


@fed_app.command()
def supernode(superlink_address: str = typer.Option(..., "--superlink", help="HOST:PORT of the SuperLink"),
              ca: Optional[Path] = typer.Option(None, help="The consortium's ca.pem"),
              key: Optional[Path] = typer.Option(None, help="This hospital's private key (its .pub is registered)"),
              partition_id: int = typer.Option(..., help="This hospital's place in the consortium, 0..N-1"),
              num_partitions: int = typer.Option(..., help="N, the hospitals in the consortium"),
              data: Optional[Path] = typer.Option(None, help="This hospital's CSV, or its folder of images (none for bundled demo data)"),
              port: int = typer.Option(9094, help="The node's own local port (one per node on a machine)"),
              state: Path = typer.Option(Path("supernode-state"), help="Cache, Flower state, logs, and this "
                                                                        "hospital's ledger and audit log (STATE/site)"),
              policy: Optional[Path] = typer.Option(None, help="This hospital's site policy (YAML): what it "
                                                                "allows, its privacy budget, its k"),
              poll_s: Optional[float] = typer.Option(None, help="While a run goes on, ask the SuperLink for "
                                                                "messages every this many seconds (default 0.25, "
                                                                "or CONSORTIUM_POLL_S; Flower's own: 3)"),
              insecure: bool = typer.Option(False, help="No TLS, no authentication (local tests only)")) -> None:
    """Start one hospital's SuperNode on its own CSV (or folder of images), in the foreground."""
    from orchestrator.federation.daemons import start_supernode
    from orchestrator.federation.flower import Link

    # relative paths are this shell's: the node runs from its own state directory
    ca, key, data, policy = (p.resolve() if p is not None else None for p in (ca, key, data, policy))
    site_policy = _site_policy(policy) if policy is not None else None
    state = state.resolve()
    if num_partitions < 1:
        _user_error("--num-partitions", f"{num_partitions}: the number of hospitals in the consortium (1 or more)")
    if not 0 <= partition_id < num_partitions:
        _user_error("--partition-id", f"{partition_id}: this hospital's place must lie in 0..{num_partitions - 1} "
                                      f"(--num-partitions is {num_partitions})")
    if poll_s is not None and not 0.01 <= poll_s <= 10:
        _user_error("--poll-s", f"{poll_s:g}: expected seconds between 0.01 and 10")
    if insecure:
        _say(INSECURE_WARNING, err=True)
        link = Link(superlink_address, None)
    else:
        if ca is None or not ca.is_file():
            _user_error("--ca", f"{'no such file: ' + str(ca) if ca else 'missing'}; a hospital trusts the SuperLink "
                                "only through the consortium's CA certificate (ca.pem), or --insecure for a local test")
        if key is None or not key.is_file():
            _user_error("--key", f"{'no such file: ' + str(key) if key else 'missing'}; the SuperLink admits this "
                                 "hospital by its private key, whose .pub was registered")
        link = Link(superlink_address, ca)
        from orchestrator.federation.flower import tls_problem

        problem = tls_problem(superlink_address, ca, timeout=30)
        if problem:
            _user_error("--ca", problem)
    publishers = None
    if site_policy is not None and policy is not None:
        publishers = _trusted(site_policy, policy, superlink_address, ca)
    if data is not None and not data.exists():
        _user_error("--data", f"{data}: no such file or folder; expected this hospital's CSV (or its folder of images)")
    from orchestrator.federation.supernode import POLL_ENV

    d = start_supernode(link, key, partition_id, num_partitions, data, port, state, policy=policy,
                        publishers=publishers, env={POLL_ENV: f"{poll_s:g}"} if poll_s is not None else None)
    _say(f"SuperNode {partition_id}/{num_partitions} -> {superlink_address} (log: {d.log}); Ctrl-C stops it")
    _foreground(d, said={NOT_REGISTERED: ("--key", "[consortium] ")})


def _site_policy(path: Path):
    from orchestrator.spec.errors import UserError
    from orchestrator.spec.policy import load_policy

    try:
        return load_policy(path)
    except UserError as exc:
        _user_error(f"--policy {exc.source}", "; ".join(exc.problems))


def _trusted(site_policy, policy: Path, address: str, ca: Path | None) -> Path | None:
    """The policy's trust section, checked before Flower starts: the SuperLink's certificate is the
    one it names; its app publishers' file (Flower's --trusted-entities) exists."""
    from orchestrator.federation.flower import certificate_sha256

    trust = site_policy.trust
    if trust.superlink_sha256:
        want = trust.superlink_sha256.replace(":", "").lower()
        try:
            got = certificate_sha256(address, ca)
        except OSError as exc:
            _user_error("--superlink", f"cannot read the SuperLink's certificate at {address}: {exc}")
        if got != want:
            _user_error(f"--policy {policy}", f"trust.superlink_sha256: the SuperLink at {address} presents a "
                                              f"certificate with fingerprint {got}, not the {want} this hospital "
                                              "trusts: it refuses to join")
    if trust.publishers is None:
        return None
    publishers = (policy.parent / trust.publishers).resolve()
    if not publishers.is_file():
        _user_error(f"--policy {policy}", f"trust.publishers: {publishers}: no such file (Flower's trusted "
                                          "entities: public key id -> ssh-ed25519 key)")
    return publishers


@fed_app.command()
def poc(config: str = typer.Argument(..., help="Job YAML file"),
        overrides: Optional[list[str]] = typer.Argument(None, help="Dotted overrides, e.g. federated.rounds=3"),
        debug: bool = typer.Option(False, help="Show the full traceback when the job fails."),
        json_out: bool = typer.Option(False, "--json", help="Also print the result as one JSON line.")) -> None:
    """Start a SuperLink and one SuperNode per hospital here (TLS, authenticated), run the job
    through them, print the summary, and stop everything."""
    from orchestrator.cli import session
    from orchestrator.console import fail_user
    from orchestrator.federation.poc import local_federation, poc_job
    from orchestrator.spec.errors import UserError

    try:
        job = session.load(config, overrides)
        if job.kind != "federated":
            raise UserError(config, [f"kind: federation poc runs federated jobs (kind is '{job.kind}')"])
        from orchestrator.jobs.runtime import prepare_environment

        prepare_environment()
        with local_federation(job) as fed:
            _say(f"consortium federation poc: SuperLink {fed.link.address} (TLS, authenticated), "
                 f"{len(fed.hospitals)} SuperNodes: {', '.join(h.name for h in fed.hospitals)}")
            # Ctrl-C: the SuperLink and SuperNodes are stopped before the process exits
            session.run_deployed_job(poc_job(job, fed), debug, json_out, on_interrupt=fed.stop)
    except UserError as exc:
        fail_user(exc)


app.add_typer(fed_app, name="federation")
