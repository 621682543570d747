"""The fleet file format: pydantic models (unknown keys rejected with their path), and
their resolution into the plain `Fleet` value.

Imported only when a fleet file has to be validated (not when `load` finds it cached).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainfleet.errors import SpecError
from trainfleet.fleet.local import local_user
from trainfleet.fleet.model import NAME_PATTERN, Container, Fleet, Jump, Node, Setup, SSHSettings, Storage


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        """Values reach ssh_config files, shell lines and mount options on every node: a
        newline or another control character in one is never meant, and could inject."""
        texts = [value] if isinstance(value, str) else value if isinstance(value, list) else \
            [*value.keys(), *value.values()] if isinstance(value, dict) else []
        for text in texts:  # (an `env:` value's newline would add lines to .deepspeed_env)
            if isinstance(text, str) and CONTROL.search(text):
                raise ValueError("contains a control character (a newline?): write it on one line")
        return value


CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HOST = re.compile(r"^(?!-)[A-Za-z0-9._:-]+$|^\[[0-9A-Fa-f:.]+\]$")
"""A host name or an IP address (never an option: no leading '-', no spaces or quotes)."""
USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*\$?$")
INTERFACE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@:-]{0,14}$")
S3_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
PATH_WORD = re.compile(r"^[^\s,'\"\\]+$")
"""A path that goes into mount options and commands as one word: no spaces, commas or quotes."""
CIFS_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@\\-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SYSTEM_DIRECTORIES = ("/", "/etc", "/root", "/home", "/usr", "/var", "/boot", "/bin", "/sbin", "/lib", "/proc",
                      "/sys", "/dev")


def _matches(pattern: re.Pattern[str], value: str | None, what: str) -> str | None:
    if value is not None and not pattern.match(value):
        raise ValueError(f"not a valid {what}")
    return value


class SSHDefaultsModel(_Strict):
    user: str | None = Field(default=None, pattern=USER.pattern)
    port: int = Field(default=22, ge=1, le=65535)
    identity_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout: float = Field(default=10.0, gt=0)
    fanout: int = Field(default=64, ge=1)
    jump: str | None = None
    keep_agent: float = Field(default=SSHSettings.keep_agent, ge=0)
    keepalive: float = Field(default=SSHSettings.keepalive, ge=1)
    reconnect_timeout: float = Field(default=SSHSettings.reconnect_timeout, ge=0)


class NodeModel(_Strict):
    host: str = Field(min_length=1)
    name: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    user: str | None = None
    identity_file: str | None = None
    slots: int = Field(default=1, ge=1)
    address: str | None = None
    interface: str | None = None
    jump: str | None = None
    spare: bool = False

    @field_validator("name")
    @classmethod
    def _name_is_simple(cls, value: str | None) -> str | None:
        if value is not None and not NAME_PATTERN.match(value):
            raise ValueError("use letters, digits, '.', '_' and '-' only")
        return value

    @field_validator("host", "address")
    @classmethod
    def _host_is_a_host(cls, value: str | None) -> str | None:
        return _matches(HOST, value, "host name or IP address (letters, digits, '.', '-', ':')")

    @field_validator("user")
    @classmethod
    def _user_is_a_user(cls, value: str | None) -> str | None:
        return _matches(USER, value, "user name")

    @field_validator("interface")
    @classmethod
    def _interface_is_a_name(cls, value: str | None) -> str | None:
        return _matches(INTERFACE, value, "network interface name (as `ip link` shows it)")


class SyncModel(_Strict):
    exclude: list[str] = Field(default_factory=list)


class SetupModel(_Strict):
    commands: list[str] = Field(min_length=1)
    files: list[str] = Field(default_factory=list)


class ContainerModel(_Strict):
    image: str = Container.image
    engine: Literal["docker", "podman"] = Container.engine  # type: ignore[assignment]
    options: list[str] = Field(default_factory=list)
    engine_options: list[str] = Field(default_factory=list)
    rootfs: str = Container.rootfs
    python: str = Container.python

    @model_validator(mode="after")
    def _image_or_rootfs(self) -> ContainerModel:
        if self.image.startswith("-") or not PATH_WORD.match(self.image or "x"):
            raise ValueError("`image:` is one word, such as nvcr.io/nvidia/pytorch:24.05-py3")
        if self.rootfs and not (self.rootfs.startswith("/") and PATH_WORD.match(self.rootfs)):
            raise ValueError("`rootfs:` is an absolute path without spaces, commas or quotes")
        if not self.image and not self.rootfs:
            raise ValueError("name an `image:` (or, with podman, a `rootfs:`)")
        if self.rootfs and self.engine != "podman":
            raise ValueError("`rootfs:` runs only with `engine: podman`")
        return self


class StorageModel(_Strict):
    type: Literal["shared-dir", "nfs", "s3", "cifs"]
    mount: str = Field(min_length=1)
    source: str = ""
    node: str = ""
    server: str = ""
    bucket: str = ""
    endpoint: str = ""
    region: str = ""
    username: str = ""
    password_secret: str = Storage.password_secret
    options: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fields_of_its_type(self) -> StorageModel:
        if not self.mount.startswith(("/", "~/")):
            raise ValueError("`mount:` must be an absolute path (or start with ~/)")
        if self.type == "s3" and not self.bucket:
            raise ValueError("an s3 storage needs `bucket:`")
        if self.type == "cifs" and not re.match(r"^//[^/]+/.+", self.source):
            raise ValueError("a cifs storage needs `source: //server/share`")
        if self.type == "cifs" and not self.username:
            raise ValueError("a cifs storage needs `username:` (its password comes from `secrets:`)")
        if self.type == "nfs" and not self.source.startswith("/"):
            raise ValueError("an nfs storage needs `source:`, the exported path (absolute)")
        if self.type == "nfs" and (self.source.rstrip("/") or "/") in SYSTEM_DIRECTORIES:
            raise ValueError(f"`source: {self.source}` would export a system directory to every node: export "
                             f"a directory of its own, such as /export/ckpt")
        for name in ("mount", "source"):
            if getattr(self, name) and (not PATH_WORD.match(getattr(self, name)) or ".." in getattr(self, name)):
                raise ValueError(f"`{name}:` is one path without spaces, commas, quotes or '..'")
        if self.bucket and not S3_BUCKET.match(self.bucket):
            raise ValueError("`bucket:` is a bucket name (letters, digits, '.', '-', '_'; not starting with '-')")
        if self.endpoint and not re.match(r"^https?://[^\s,'\"]+$", self.endpoint):
            raise ValueError("`endpoint:` is a URL such as https://s3.example.com")
        if self.region and not re.match(r"^[a-z0-9-]+$", self.region):
            raise ValueError("`region:` is a region name such as us-east-1")
        if self.username and not CIFS_USER.match(self.username):
            raise ValueError("`username:` is one user name (no commas, spaces or '=')")
        if not ENV_NAME.match(self.password_secret):
            raise ValueError("`password_secret:` names an environment variable")
        if self.server and not HOST.match(self.server):
            raise ValueError("`server:` is a host name or IP address")
        if self.type != "s3" and (self.bucket or self.endpoint or self.region):
            raise ValueError("`bucket:`, `endpoint:` and `region:` are for s3 storage")
        if self.server and self.type != "nfs":
            raise ValueError("`server:` is for nfs storage (shared-dir is served by a node: `node:`)")
        for option in self.options:
            if "," in option or not re.match(r"^[A-Za-z0-9_.=:/-]+$", option):
                raise ValueError(f"option {option!r}: give one `name` or `name=value` per item")
        return self


class FleetModel(_Strict):
    nodes: list[NodeModel] = Field(min_length=1)
    workdir: str = "~/trainfleet"
    python: str = "python3"
    env: dict[str, str] = Field(default_factory=dict)
    secrets: list[str] = Field(default_factory=list)
    ssh: SSHDefaultsModel = Field(default_factory=SSHDefaultsModel)
    sync: SyncModel = Field(default_factory=SyncModel)
    setup: list[str] | SetupModel | None = None
    """A list of commands, or {commands: [...], files: [...]}."""
    launcher: str = Fleet.launcher
    container: ContainerModel | None = None
    storage: list[StorageModel] = Field(default_factory=list)
    firewall: Literal["open", "closed"] = "open"

    @field_validator("setup")
    @classmethod
    def _setup_commands(cls, value: list[str] | SetupModel | None) -> list[str] | SetupModel | None:
        commands = value if isinstance(value, list) else value.commands if value else []
        if value is not None and not [c for c in commands if c.strip()]:
            raise ValueError("list at least one shell command")
        return value

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
        if len(set(value)) != len(value):
            raise ValueError("a secret is listed twice")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return value


def _format_location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's type may hold (through lists, dicts, unions and Optional)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for inner in getattr(annotation, "__args__", ()) for model in _models_in(inner)]


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys a mapping at `loc` (the path of its parent) may have: what `init` documents."""
    models: list[type[BaseModel]] = [FleetModel]
    for part in loc:
        if isinstance(part, int):
            continue  # a list item: the same models as the list's
        models = [inner for model in models if part in model.model_fields
                  for inner in _models_in(model.model_fields[part].annotation)]
    return sorted({key for model in models for key in model.model_fields})


def _describe(error: Mapping[str, Any]) -> tuple[str, str]:
    """One line for a pydantic error, and its fix."""
    import difflib

    loc = tuple(error["loc"])
    where = _format_location(loc)
    generic = "see `trainfleet init` for every allowed key"
    if error["type"] == "extra_forbidden":
        allowed = _keys_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.6)
        if close:
            return f"{where}: unknown key", f"did you mean `{close[0]}`?"
        return f"{where}: unknown key", (f"the keys allowed here are {', '.join(allowed)}" if allowed else generic)
    if error["type"] == "missing":
        return f"{where}: required key is missing", generic
    if error["type"] in ("model_type", "model_attributes_type", "dict_type"):
        got = error.get("input")
        if loc[:1] == ("nodes",) and len(loc) == 2:
            example = got if isinstance(got, str) and HOST.match(got) else "203.0.113.10"
            return (f"{where}: each node is a mapping, not {got!r}",
                    f"write it as `- host: {example}` (with `name:`, `slots:`, … under it as needed)")
        return f"{where}: expected a mapping of keys, not {got!r}", generic
    return f"{where}: {error['msg']} (got {error.get('input')!r})", generic


def _frozen(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A validated model's fields for its frozen dataclass (the same names): lists become tuples."""
    return {key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()}


def _expand_local(path: str | None) -> str | None:
    return os.path.expanduser(path) if path else None


def resolve(model: FleetModel, source: str, base_dir: Path, state_dir: str = "", check_keys: bool = True) -> Fleet:
    """Fill each node's SSH settings from the fleet defaults and check the whole (the key
    files too, unless the caller uses no SSH: an export for a scheduler)."""

    def local_path(path: str | None) -> str | None:
        expanded = _expand_local(path)
        if expanded and not os.path.isabs(expanded):
            expanded = str((base_dir / expanded).resolve())
        return expanded

    defaults = model.ssh
    hosts = [n.host for n in model.nodes]
    nodes: list[Node] = []
    seen_names: dict[str, int] = {}
    seen_targets: dict[tuple[str, int], int] = {}
    for index, spec in enumerate(model.nodes):
        where = f"{source}: nodes[{index}]"
        port = spec.port or defaults.port
        name = spec.name or (spec.host if hosts.count(spec.host) == 1 else f"{spec.host}-{port}")
        if not NAME_PATTERN.match(name):
            raise SpecError(f"{where}.name: {name!r} is not a usable node name",
                            fix="set `name:` to letters, digits, '.', '_' or '-'")
        if (spec.host, port) in seen_targets:
            raise SpecError(
                f"{where}.host: duplicate host {spec.host}:{port} (also nodes[{seen_targets[(spec.host, port)]}])",
                fix="list each machine once; use `slots:` for several processes on one machine")
        if name in seen_names:
            raise SpecError(f"{where}.name: duplicate node name {name!r} (also nodes[{seen_names[name]}])",
                            fix="give every node a different `name:`")
        seen_names[name] = index
        if spec.spare and index == 0:
            raise SpecError(f"{where}.spare: node 0 ({name}) hosts the job's rendezvous and cannot be a spare",
                            fix="list the spare after the nodes that train")
        seen_targets[(spec.host, port)] = index
        identity = local_path(spec.identity_file or defaults.identity_file)
        if check_keys and identity and not os.path.isfile(identity):
            field_name = "identity_file" if spec.identity_file else "ssh.identity_file"
            raise SpecError(f"{where} ({name}): {field_name}: key file {identity} does not exist",
                            fix="point it at the private key your provider gave you (the one its console "
                                "installed on the machines), or leave it out to use ssh-agent and ~/.ssh/id_*; "
                                "a key new from ssh-keygen is on no rented machine yet")
        jump_text = spec.jump or defaults.jump
        try:
            jump = Jump.parse(jump_text) if jump_text else None
            # It lands in every node's ProxyJump line: a host and a user, never an option.
            if jump is not None and (not HOST.match(jump.host) or (jump.user and not USER.match(jump.user))):
                raise ValueError(f"{jump_text!r} is not user@host:port (a user name and a host name or address)")
        except ValueError as exc:
            raise SpecError(f"{where} ({name}): jump: {exc}", fix="write it as user@host:port") from None
        address = spec.address or spec.host
        nodes.append(Node(
            name=name,
            host=spec.host,
            port=port,
            user=spec.user or defaults.user or local_user(),
            slots=spec.slots,
            identity_file=identity,
            address=address,
            interface=spec.interface,
            jump=jump,
            spare=spec.spare,
        ))
    setup = model.setup
    commands = setup if isinstance(setup, list) else setup.commands if setup else []
    storage = _storage(model, source, [n.name for n in nodes])
    return Fleet(
        nodes=tuple(nodes),
        workdir=model.workdir,
        python=model.python,
        env=dict(model.env),
        secrets=tuple(model.secrets),
        sync_exclude=tuple(model.sync.exclude),
        setup=Setup(commands=tuple(commands), files=tuple(setup.files if isinstance(setup, SetupModel) else ())),
        launcher=model.launcher,
        container=Container(**_frozen(model.container.model_dump())) if model.container else None,
        storage=storage,
        firewall=model.firewall,
        ssh=SSHSettings(
            known_hosts=local_path(defaults.known_hosts) or "",
            connect_timeout=defaults.connect_timeout,
            fanout=defaults.fanout,
            keep_agent=defaults.keep_agent,
            keepalive=defaults.keepalive,
            reconnect_timeout=defaults.reconnect_timeout,
            state_dir=state_dir,
        ),
        source=source,
    )


def fleet_from_data(data: Any, source: str, base_dir: Path | None = None, state_dir: str = "",
                    check_keys: bool = True) -> Fleet:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping with a `nodes:` list, got {type(data).__name__}",
                        fix="run `trainfleet init` for a commented example")
    try:
        model = FleetModel.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = len(exc.errors()) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
        what, fix = _describe(first)
        raise SpecError(f"{source}: {what}{suffix}", fix=fix) from None
    return resolve(model, source, base_dir or Path.cwd(), state_dir, check_keys)


def parse_fleet_text(text: str, source: str, base_dir: Path, state_dir: str = "", check_keys: bool = True) -> Fleet:
    from trainfleet.fleet.importers import looks_like_hostfile, parse_hostfile

    if looks_like_hostfile(text):
        return fleet_from_data(parse_hostfile(text, source), source, base_dir, state_dir, check_keys)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except _DuplicateKey as exc:
        raise SpecError(f"{source}: line {exc.line}: key `{exc.key}` is given twice (also line {exc.first}); "
                        f"the second would silently replace the first",
                        fix="keep one, merging what both say") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{source}:{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return fleet_from_data(data, source, base_dir, state_dir, check_keys)


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(key)
        self.key, self.line, self.first = key, line, first


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML keeps the last of two equal keys; a fleet file with two `container:` blocks
    is a mistake, never meant: refuse it, naming both lines."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise _DuplicateKey(str(key), line, seen[key])
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


def dump_fleet_yaml(fleet_data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(fleet_data), sort_keys=False, default_flow_style=False)


_STORAGE_SECRETS = {"s3": ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}


def _storage(model: FleetModel, source: str, names: list[str]) -> tuple[Storage, ...]:
    """Each entry checked against the rest of the file: its node, its secrets, one path each."""
    found = []
    mounts: dict[str, int] = {}
    for index, entry in enumerate(model.storage):
        where = f"{source}: storage[{index}]"
        if entry.mount.rstrip("/") in mounts:
            raise SpecError(f"{where}.mount: {entry.mount} is also storage[{mounts[entry.mount.rstrip('/')]}]'s",
                            fix="give each storage a path of its own")
        mounts[entry.mount.rstrip("/")] = index
        if entry.node and entry.node not in names:
            raise SpecError(f"{where}.node: no node named {entry.node!r} (nodes: {', '.join(names)})",
                            fix="name one of the fleet's nodes, or leave it out for node 0")
        needed = _STORAGE_SECRETS.get(entry.type, ()) + ((entry.password_secret,) if entry.type == "cifs" else ())
        missing = [name for name in needed if name not in model.secrets]
        if missing:
            raise SpecError(f"{where}: a {entry.type} storage needs the secret(s) {', '.join(missing)}",
                            fix="add them to `secrets:` (their values come from your environment at run time, "
                                "never from this file)")
        found.append(Storage(**{**_frozen(entry.model_dump()), "mount": entry.mount.rstrip("/") or "/"}))
    return tuple(found)
