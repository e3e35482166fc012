"""The coordinator's own settings, read from server.toml: network, TLS, store, scheduling, registry, SecAgg stages.

The federated run itself (model, LoRA, client training, strategy, privacy) stays a
`RunConfig`, named by `server.run_config`; this file says only how the service runs it.
Every key is checked like the run config's: an unknown key or a bad value is refused
with a message naming it. Relative paths are taken from the folder of server.toml.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlm.config import RunConfig, build_section, collect_problems, load_config, read_toml, report, require
from fedlm.service.certs import CLIENT_ID
from fedlm.service.limits import with_limits

# Honest updates of the embedded default (SmolLM2, r = 8, default client settings) measured 4.4 to 5.9
# in L2 norm in round 1; the bound leaves them untouched and caps one client's pull on the mean at 20.
NORM_BOUND_DEFAULT = 20.0
# A client weighs at most this many training sequences: a Shakespeare role holds 2 to a few hundred.
WEIGHT_CAP_DEFAULT = 1000.0


@dataclass(frozen=True)
class ServerSection:
    host: str = "127.0.0.1"  # address uvicorn binds
    port: int = 8443
    data_dir: str = "fedlm-server"  # blobs/ and (by default) the SQLite file live here
    database_url: str = ""  # SQLAlchemy URL; "" = sqlite:///<data_dir>/fedlm.db
    run_config: str = ""  # the RunConfig TOML (model, lora, client, strategy, ...); "" = defaults
    max_upload_bytes: int = 64 * 2**20  # an upload body past this is refused with 413 while streaming
    tick_seconds: float = 0.5  # how often deadlines and round opening are checked
    log_format: str = "text"  # "text" (readable lines) or "json" (one object per line; see service.structured_logs)
    read_timeout_seconds: float = 10.0  # a request's head must arrive within this, and each piece of a body within this of the last
    max_body_seconds: float = 600.0  # a request body (an upload) still arriving after this is cut off with 408
    max_staging_bytes: int = 2**30  # uploads being received hold at most this much disk together; past it 507 staging_full
    operators: tuple[str, ...] = ()  # client ids (certificate CNs) that may open /dashboard and change production; () = nobody
    # true: one of several `fedlm serve` processes (replicas) over one PostgreSQL database and one shared data_dir,
    # serving one federation: any replica takes check-ins and uploads, the one holding the leader lock opens and
    # closes rounds (service.replica). Every replica's server.toml says so; each needs its own port (or host)
    replica: bool = False
    # "" = blobs under data_dir/blobs on the filesystem (shared by replicas); "s3://bucket/prefix" = an S3-compatible
    # object store (service.object_blobs, pip install 'fedlm[s3]'), data_dir/blobs then holding a verified local cache
    blob_url: str = ""
    blob_endpoint: str = ""  # the object store's endpoint URL when it is not AWS (e.g. "http://minio.internal:9000")

    def __post_init__(self) -> None:
        require(1 <= self.port <= 65535, "server.port", "must be in [1, 65535]")
        require(bool(self.data_dir), "server.data_dir", "must not be empty")
        require(self.max_upload_bytes >= 1024, "server.max_upload_bytes", "must be >= 1024")
        require(self.tick_seconds > 0, "server.tick_seconds", "must be > 0")
        require(self.log_format in ("text", "json"), "server.log_format", f"must be 'text' or 'json', got {self.log_format!r}")
        require(self.read_timeout_seconds > 0, "server.read_timeout_seconds", "must be > 0")
        require(self.max_body_seconds >= self.read_timeout_seconds, "server.max_body_seconds",
                "must be >= server.read_timeout_seconds")
        require(self.max_staging_bytes >= self.max_upload_bytes, "server.max_staging_bytes",
                "must be >= server.max_upload_bytes (room for at least one whole upload)")
        require(not self.blob_url or (self.blob_url.startswith("s3://") and len(self.blob_url) > 5), "server.blob_url",
                f"must be \"\" (the data directory) or s3://bucket[/prefix], got {self.blob_url!r}")
        require(not self.blob_endpoint or bool(self.blob_url), "server.blob_endpoint", "applies with server.blob_url only")
        bad = [name for name in self.operators if not CLIENT_ID.fullmatch(name)]
        require(not bad, "server.operators", f"must be client ids (certificate CNs: 1-64 letters, digits, '.', '_', '-'), "
                f"not {', '.join(map(repr, bad))}")


@dataclass(frozen=True)
class TlsSection:
    cert: str = "certs/server.pem"  # the server's certificate (fedlm certs init writes it)
    key: str = "certs/server.key"
    ca: str = "certs/ca.pem"  # client certificates must be signed by this CA
    crl: str = "certs/crl.pem"  # revocation list; re-read when the file changes; "" = none

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            require(bool(getattr(self, name)), f"tls.{name}", "must not be empty: the service always runs mutual TLS")


@dataclass(frozen=True)
class SchedulingSection:
    over_selection: float = 0.0  # invite this fraction more than federation.clients_per_round
    deadline_seconds: float = 600.0  # a round closes with what arrived once this has passed
    availability_seconds: float = 30.0  # a client counts as available if it polled this recently
    require_charging: bool = False  # eligibility: the client says it is charging
    require_unmetered: bool = False  # eligibility: the client is on an unmetered network
    min_free_memory_mb: int = 0  # eligibility: the client reports at least this much free memory
    regions: tuple[str, ...] = ()  # eligibility: the client's region is one of these; () = any
    population: int = 0  # the number of clients the DP accountant assumes; needed with privacy

    def __post_init__(self) -> None:
        require(0 <= self.over_selection <= 10, "scheduling.over_selection", "must be in [0, 10]")
        require(self.deadline_seconds > 0, "scheduling.deadline_seconds", "must be > 0")
        require(self.availability_seconds > 0, "scheduling.availability_seconds", "must be > 0")
        require(self.min_free_memory_mb >= 0, "scheduling.min_free_memory_mb", "must be >= 0")
        require(self.population >= 0, "scheduling.population", "must be >= 0")


@dataclass(frozen=True)
class RegistrySection:
    eval_data: str = ""  # held-out text (fedlm folder layout) for the canary gate; "" = promote every version
    canary_margin: float = 0.0  # do not promote a version whose eval loss, overall or on any slice (sub-folder of eval_data), is worse by more than this
    eval_max_sequences: int = 32  # evaluation sequences per slice
    on_regression: str = "hold"  # a version not promoted: "hold" (training goes on from it) or "rollback" (training goes back to production)

    def __post_init__(self) -> None:
        require(self.canary_margin >= 0, "registry.canary_margin", "must be >= 0")
        require(self.on_regression in ("hold", "rollback"), "registry.on_regression", "must be 'hold' or 'rollback'")
        require(self.eval_max_sequences >= 1, "registry.eval_max_sequences", "must be >= 1")


@dataclass(frozen=True)
class SecAggSection:
    """Deadlines of the SecAgg stages (when the run config has secagg.enabled): a stage closes as soon as
    every client still in it has answered, or at its deadline with those that did."""

    advertise_seconds: float = 60.0  # cohort clients post their public keys
    share_seconds: float = 120.0  # clients post sealed shares; they train meanwhile
    mask_seconds: float = 600.0  # clients finish training and upload their masked input
    confirm_seconds: float = 60.0  # survivors sign the survivor and dropped sets (the consistency check)
    unmask_seconds: float = 60.0  # survivors post the shares that remove the masks

    def __post_init__(self) -> None:
        for stage in ("advertise", "share", "mask", "confirm", "unmask"):
            require(getattr(self, f"{stage}_seconds") > 0, f"secagg.{stage}_seconds", "must be > 0")

    def seconds(self, stage: str) -> float:
        return float(getattr(self, f"{stage}_seconds"))


@dataclass(frozen=True)
class LimitsSection:
    """Bounds on every plain update, applied where the run config leaves the strategy's own at 0 (service.limits)."""

    norm_bound: float = NORM_BOUND_DEFAULT  # scale each update to L2 norm <= this (unless strategy.norm_bound is set); 0 = lift
    max_client_weight: float = WEIGHT_CAP_DEFAULT  # samples weighting: weigh a client at most this (unless strategy sets it); 0 = lift

    def __post_init__(self) -> None:
        require(0 <= self.norm_bound < math.inf, "limits.norm_bound", "must be a finite number >= 0 (0 lifts the bound)")
        require(0 <= self.max_client_weight < math.inf, "limits.max_client_weight",
                "must be a finite number >= 0 (0 lifts the cap)")


@dataclass(frozen=True)
class ServiceSettings:
    server: ServerSection = field(default_factory=ServerSection)
    tls: TlsSection = field(default_factory=TlsSection)
    scheduling: SchedulingSection = field(default_factory=SchedulingSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    root: Path = Path(".")  # the folder relative paths are taken from (server.toml's)

    def path(self, value: str) -> Path:
        return (self.root / value).resolve() if value else Path()

    @property
    def data_dir(self) -> Path:
        return self.path(self.server.data_dir)

    @property
    def database_url(self) -> str:
        return self.server.database_url or f"sqlite:///{self.data_dir / 'fedlm.db'}"

    def run_config(self) -> RunConfig:
        """The run config as the service runs it: the file's settings with [limits] where they set no bound."""
        run = load_config(self.path(self.server.run_config) if self.server.run_config else None)
        with collect_problems():
            if self.server.replica:
                require(not run.secagg.enabled, "secagg.enabled", "server.replica = true does not run secure "
                        "aggregation yet: its stages keep the protocol's state in one process")
                require(run.policy.kind == "sync", "policy.kind", "server.replica = true runs synchronous rounds only")
            require(run.federation.sampling != "cyclic", "federation.sampling",
                    "'cyclic' (and privacy.mechanism = 'banded_mf') run in `fedlm simulate` only: the service invites "
                    "the clients that are online, so it cannot hold a client to one turn every federation.groups rounds")
            require(run.clusters.count == 1, "clusters.count",
                    "the service holds one global model: several globals (clustered FL) run in `fedlm simulate` only")
            require(run.policy.kind != "quorum", "policy.kind",
                    "'quorum' is the simulation's name for the service's own round: set federation.clients_per_round "
                    "(updates that close a round early) and [scheduling] deadline_seconds in server.toml instead")
        return with_limits(run, norm_bound=self.limits.norm_bound, max_client_weight=self.limits.max_client_weight)


def settings_from_dict(data: dict[str, Any], root: Path = Path(".")) -> ServiceSettings:
    """server.toml's tables, every problem of every table reported at once (one ConfigError)."""
    hints = typing.get_type_hints(ServiceSettings)
    sections = sorted({f.name for f in dataclasses.fields(ServiceSettings)} - {"root"})
    with collect_problems():
        built = {}
        for name, values in data.items():
            if name in sections:
                built[name] = build_section(name, hints[name], values)
            else:
                report(f"{name}: unknown table; known: {', '.join(sections)}")
        settings = ServiceSettings(**built, root=root)
        if "server" in built and settings.server.replica:
            require(settings.database_url.startswith("postgresql"), "server.replica",
                    "replicas share their rounds through one PostgreSQL database: set server.database_url to it "
                    "(two coordinators on SQLite cannot: SQLite has one writer and no advisory locks)")
        return settings


def load_settings(path: Path) -> ServiceSettings:
    path = Path(path)
    return settings_from_dict(read_toml(path, "server config"), root=path.resolve().parent)
