"""What the package's launch files start, computed from their arguments (pure: no `launch`).

One family of launch files (`launch/sam3.launch.py` and the `segmenter`, `tracker` and
`pipeline` shortcuts) shares these pieces: the camera topic, namespace, node kind and name,
model, device, dtype, prompts, input kind, a user's params file, use_sim_time, autostart,
log level and the Fast DDS profile. `sam3_ros.launch_description` turns the plan into
launch_ros actions; this module holds every decision so CI (which has no `launch`) tests it.

Precedence, lowest first: the node's declared defaults (equal to config/*.yaml), the launch
files' own defaults (autostart: true), the user's `params_file`, then the launch arguments the
user actually set. An argument left unset ('') never overrides the params file.

How rcl ranks parameter files: it merges every `--params-file` of a process into one list of
node-name keys, in the order each key was *first seen*, and a node takes its values from every
matching key in that order (a later key wins, however specific the earlier one). A value
written in a later file under a key already seen lands in that key's earlier place. So the
launch files' own values go under keys that no earlier file uses (`KeyedParameters`,
`unused_keys`), or an argument the user set would lose to a wildcard key of their file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

NODE_KINDS = ("segmenter", "tracker", "pipeline")
EXECUTORS = ("single_threaded", "events")
"""rclpy executors a process may spin (`--executor`): rclpy's SingleThreadedExecutor, or its
experimental EventsExecutor (Jazzy and later; shorter frame delivery)."""
STREAM_KINDS = ("segmenter", "tracker")
"""Node kinds one camera of a several-camera process may run."""

# name -> (default, description). '' means "unset: the params file or the node's default".
LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "node": ("segmenter", "What to run: segmenter, tracker, or pipeline (both in one process, "
                          "one shared model)"),
    "name": ("", "Node name ('' = the node kind; ignored for the pipeline, whose nodes are "
                 "named segmenter and tracker). Outputs and services are ~/ of this name"),
    "namespace": ("", "Namespace of the node(s), e.g. the camera's name"),
    "cameras": ("", "Several cameras in one process with one model: a YAML list \"[front, "
                    "wrist]\"; each camera gets the node(s) of `node` in <namespace>/<camera>, "
                    "reading the relative `image` topic there; per camera kinds with "
                    "\"[front, wrist:tracker]\" or \"{front: segmenter, wrist: [segmenter, "
                    "tracker]}\" ('' = one camera)"),
    "max_batch": ("", "Most camera frames in one backbone pass, pipeline/cameras only "
                      "('' = 4)"),
    "image": ("image", "Camera image topic (raw); with input_kind:=compressed, "
                       "<image>/compressed is read"),
    "depth": ("depth", "Registered depth image topic (used when depth_enabled is true)"),
    "camera_info": ("camera_info", "Colour camera's CameraInfo topic (used with depth)"),
    "depth_enabled": ("", "true: 3D outputs from the depth and camera_info topics ('' = params "
                          "file / default false)"),
    "input_kind": ("", "raw or compressed ('' = params file / default raw)"),
    "model": ("", "Hugging Face id or checkpoint folder ('' = params file / default "
                  "facebook/sam3)"),
    "device": ("", "cpu, cuda, cuda:N or auto ('' = params file / default auto)"),
    "dtype": ("", "float32, float16 or bfloat16 ('' = params file / default float32)"),
    "prompts": ("", "Text prompts: a YAML list \"[mug, bottle]\" or one phrase \"mug\" ('' = "
                    "params file / default)"),
    "params_file": ("", "Your parameter file (keys /**/segmenter, /**/tracker); applied over "
                        "the defaults, under the arguments you set"),
    "use_sim_time": ("", "true to use /clock (bags, simulation); '' = params file / false"),
    "autostart": ("", "Configure and activate on start ('' = params file, else true; false: "
                      "a lifecycle manager drives the node)"),
    "log_level": ("info", "debug, info, warn, error or fatal"),
    "executor": ("single_threaded", "rclpy executor of the process: single_threaded, or events "
                                    "(rclpy's experimental EventsExecutor, Jazzy and later: "
                                    "frames reach the node sooner)"),
    "fastdds_profile": ("<package>/config/fastdds_large_frames.xml",
                        "Fast DDS profile for the processes started here (a profile already in "
                        "FASTDDS_DEFAULT_PROFILES_FILE wins; '' leaves the environment alone)"),
}

# Launch arguments that become node parameters when set, and how their text is read.
_PARAMETER_ARGUMENTS = ("input_kind", "model", "device", "dtype", "prompts", "use_sim_time",
                        "autostart", "depth_enabled")
_BOOL_TEXT = {"true": True, "false": False, "True": True, "False": False, "1": True, "0": False}
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")


class LaunchArgumentError(ValueError):
    """A launch argument that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class KeyedParameters:
    """Parameters to hand a process in a parameter file of their own, under `key`.

    Attributes:
        key: An rcl node-name pattern matching every node of the process (see `unused_keys`).
        values: Parameter name -> value.
    """

    key: str
    values: dict[str, Any]

    def yaml_text(self) -> str:
        """The parameter file's text."""
        return yaml.safe_dump({self.key: {"ros__parameters": self.values}},
                              default_flow_style=False)


def parameter_file_paths(parameters: list[Any], directory: str | None = None) -> list[str]:
    """A plan's `parameters` as the parameter-file paths to hand the process, in order: the
    user's file as it is, each `KeyedParameters` written to a new file (in `directory`, or the
    temporary directory; the launch description removes them at shutdown)."""
    import tempfile

    paths = []
    for entry in parameters:
        if isinstance(entry, KeyedParameters):
            with tempfile.NamedTemporaryFile("w", prefix="sam3_ros_params_", suffix=".yaml",
                                             dir=directory, delete=False) as file:
                file.write(entry.yaml_text())
            entry = file.name
        paths.append(entry)
    return paths


def params_file_keys(path: str) -> set[str]:
    """The node-name keys of an rcl parameter file, with a leading '/' (nested namespaces
    joined; every YAML document of the file; a child key that starts with `ros__parameters`
    ends a node name, as rcl's parser takes it). What rcl itself would refuse in the file is
    left to rcl's own error when the node starts.

    Raises:
        LaunchArgumentError: the file cannot be read or is not YAML mappings.
    """
    try:
        with open(path, encoding="utf-8") as file:
            documents = list(yaml.safe_load_all(file))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise LaunchArgumentError(f"params_file:={path!r}: cannot be read as YAML: "
                                  f"{str(err).splitlines()[0]}") from None
    keys: set[str] = set()

    def walk(mapping: dict, prefix: str) -> None:
        for name, value in mapping.items():
            if str(name).startswith("ros__parameters"):
                keys.add(prefix or "/")
            elif isinstance(value, dict):
                walk(value, f"{prefix}/{str(name).strip('/')}")

    for document in documents:
        if document is None:
            continue
        if not isinstance(document, dict):
            raise LaunchArgumentError(
                f"params_file:={path!r}: expected a mapping of node names, e.g. "
                f"'/**/segmenter:' (got {type(document).__name__})")
        walk(document, "")
    return keys


def _node_name(*parts: str) -> str:
    """A fully qualified node name from namespaces and a name ('' and '/' parts ignored)."""
    return "/" + "/".join(t for part in parts for t in part.split("/") if t)


def key_matches(key: str, node_name: str) -> bool:
    """Whether a parameter file's node key (`/**/segmenter`, `/robot/*/tracker`) applies to a
    fully qualified node name, as rcl matches it: `**` is any number of namespace tokens,
    `*` exactly one token."""
    pattern = re.escape(key).replace(r"/\*\*", r"(/\w+)*").replace(r"/\*", r"(/\w+)")
    return re.fullmatch(pattern, node_name) is not None


def params_file_warning(path: str, keys: set[str], node_names: list[str]) -> str | None:
    """A warning when none of a params file's keys applies to a node of the launch (the file
    would change nothing, silently), else None."""
    if not keys or any(key_matches(k, n) for k in keys for n in node_names):
        return None
    return (f"params_file:={path!r}: none of its node keys ({', '.join(sorted(keys))}) "
            f"matches a node of this launch ({', '.join(node_names)}), so it changes nothing; "
            "key it '/**/segmenter:' (any namespace) or by a node's full name")


def unused_keys(taken: set[str], count: int) -> list[str]:
    """`count` node-name keys that match every node and are none of `taken`.

    `/**`, `/**/*`, `/**/**/*`, ...: each matches any node name (`**` is zero or more
    namespace tokens, `*` exactly one), and being new strings they are first seen where they
    are written, i.e. after every key of the files before them.
    """
    keys, depth = [], 0
    while len(keys) < count:
        key = "/**" if depth == 0 else "/**" * depth + "/*"
        if key not in taken:
            keys.append(key)
        depth += 1
    return keys


@dataclass
class LaunchPlan:
    """The one process a launch file starts.

    Attributes:
        executable: `segmenter`, `tracker` or `pipeline` (in lib/sam3_ros).
        arguments: Command-line arguments before `--ros-args` (the pipeline's cameras).
        name: Node name for a single node; None for the pipeline (its nodes keep their names).
        namespace: Namespace ('' = root).
        lifecycle: Start as a launch_ros LifecycleNode (single nodes).
        parameters: In precedence order: `KeyedParameters` (the launch files' own) and the
            user's parameter-file path.
        remappings: (from, to) topic remappings.
        ros_arguments: Extra `--ros-args` (log level).
        environment: Variables to set for the process (the Fast DDS profile).
        warnings: Things the launch should tell the user (it starts the process anyway).
    """

    executable: str
    name: str | None
    namespace: str
    lifecycle: bool
    parameters: list[Any] = field(default_factory=list)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    ros_arguments: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def node_names(self, outer_namespace: str = "") -> list[str]:
        """Fully qualified names of the nodes the process will have.

        Args:
            outer_namespace: A namespace pushed around the launch (`PushRosNamespace`).
        """
        # launch_ros pushes an outer namespace in front of a relative namespace only.
        outer = "" if self.namespace.startswith("/") else outer_namespace
        if self.executable != "pipeline":
            return [_node_name(outer, self.namespace, self.name or self.executable)]
        args = self.arguments
        kinds = args[args.index("--nodes") + 1].split(",") if "--nodes" in args else list(
            STREAM_KINDS)
        if "--cameras" not in args:
            return [_node_name(outer, self.namespace, kind) for kind in kinds]
        # The cameras' namespaces are absolute (an outer namespace makes the pipeline refuse).
        cameras = args[args.index("--cameras") + 1:args.index("--nodes")]
        return [_node_name(camera, kind) for camera, own in map(split_camera, cameras)
                for kind in own or kinds]

    @property
    def action_namespace(self) -> str | None:
        """The `namespace` to give the launch_ros action.

        A LifecycleNode needs a string ('' = root): it watches <namespace>/<name>/
        transition_event, and None made that an invalid topic name (the launch failed). A
        plain Node gets None when unset: launch_ros turns '' into `__ns:=/`, which would
        override the namespace of every node of the process (the cameras' included).
        """
        if self.lifecycle:
            return self.namespace or ""
        return self.namespace or None


def parse_prompts(text: str) -> list[str]:
    """`prompts:=...` text -> list of phrases: a YAML list, or one phrase without brackets.

    Raises:
        LaunchArgumentError: not a list of strings.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text  # e.g. "mug: red" is a phrase, not a mapping the user meant
    if value is None:
        return [""]
    if isinstance(value, dict) and not text.lstrip().startswith("{"):
        return [text.strip()]  # "mug: red" is a phrase with a colon
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list) and all(isinstance(v, str | int | float) and not isinstance(
            v, bool) for v in value):
        return [str(v) for v in value] or [""]
    raise LaunchArgumentError(f"prompts:={text!r} is not a phrase or a list of phrases")


def parse_bool(name: str, text: str) -> bool:
    if text not in _BOOL_TEXT:
        raise LaunchArgumentError(f"{name}:={text!r}: expected true or false")
    return _BOOL_TEXT[text]


def parameter_overrides(values: dict[str, str]) -> dict[str, Any]:
    """Node parameters from the launch arguments that were set (non-empty)."""
    overrides: dict[str, Any] = {}
    for name in _PARAMETER_ARGUMENTS:
        text = values.get(name, "").strip()
        if not text:
            continue
        if name == "prompts":
            overrides[name] = parse_prompts(text)
        elif name in ("use_sim_time", "autostart", "depth_enabled"):
            overrides[name] = parse_bool(name, text)
        else:
            overrides[name] = text
    return overrides


def split_camera(item: str) -> tuple[str, list[str] | None]:
    """`front`, `wrist:tracker` or `base:segmenter+tracker` -> (camera, its node kinds or None
    for the process's default kinds).

    Raises:
        ValueError: an unknown or repeated node kind.
    """
    camera, _, kinds_text = item.strip().partition(":")
    if not camera.strip().strip("/"):
        raise ValueError(f"camera '{item}': no camera name")
    if not _:
        return camera.strip(), None
    kinds = [k.strip() for k in kinds_text.split("+")]
    if not kinds or any(k not in STREAM_KINDS for k in kinds) or len(set(kinds)) != len(kinds):
        raise ValueError(f"camera '{item}': node kinds after ':' are segmenter, tracker or "
                         "segmenter+tracker")
    return camera.strip(), kinds


def parse_cameras(text: str, namespace: str) -> list[str]:
    """`cameras:=...` text -> the pipeline's camera arguments (namespaces under `namespace`,
    with `:kind+kind` where a camera names its own node kinds).

    Accepts a list (`[front, wrist:tracker]`) or a mapping of camera -> kind or kinds
    (`{front: segmenter, wrist: [segmenter, tracker]}`).

    Raises:
        LaunchArgumentError: not a list of names, a name listed twice, an unknown kind.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if isinstance(value, str):
        value = [value]
    if isinstance(value, dict):
        items = []
        for camera, kinds in value.items():
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if not isinstance(camera, str) or not isinstance(kinds, list) or not kinds or \
                    not all(isinstance(k, str) for k in kinds):
                raise LaunchArgumentError(
                    f"cameras:={text!r}: a mapping gives each camera a kind or a list of "
                    "kinds, e.g. \"{front: segmenter, wrist: [segmenter, tracker]}\"")
            items.append(f"{camera}:{'+'.join(kinds)}")
        value = items
    if not isinstance(value, list) or not value or not all(
            isinstance(v, str) and v.strip() for v in value):
        raise LaunchArgumentError(f"cameras:={text!r}: expected a list of camera names, "
                                  "e.g. \"[front, wrist]\"")
    base = "/" + namespace.strip("/") if namespace.strip("/") else ""
    names, arguments = [], []
    for item in value:
        try:
            camera, kinds = split_camera(item)
        except ValueError as err:
            raise LaunchArgumentError(f"cameras:={text!r}: {err}") from None
        names.append(f"{base}/{camera.strip('/')}")
        arguments.append(names[-1] + (f":{'+'.join(kinds)}" if kinds else ""))
    if len(set(names)) != len(names):
        raise LaunchArgumentError(f"cameras:={text!r}: a camera is listed twice")
    return arguments


def plan(values: dict[str, str], default_profile: str, outer_namespace: str = "") -> LaunchPlan:
    """The process to start for these launch argument values.

    Args:
        values: Every argument of LAUNCH_ARGUMENTS by name, as text (after substitution).
        default_profile: Path of the package's Fast DDS profile.
        outer_namespace: A namespace pushed around the launch file (`PushRosNamespace`), for
            matching the params file's keys against the nodes' names.

    Raises:
        LaunchArgumentError: an unknown node kind or executor, a bad boolean, prompts or log
            level, or a params file that does not exist.
    """
    kind = values.get("node", "segmenter").strip()
    if kind not in NODE_KINDS:
        raise LaunchArgumentError(f"node:={kind!r}: expected one of {', '.join(NODE_KINDS)}")
    params_file = values.get("params_file", "").strip()
    if params_file and not os.path.isfile(params_file):
        raise LaunchArgumentError(f"params_file:={params_file!r}: no such file")
    log_level = values.get("log_level", "info").strip() or "info"
    if log_level not in LOG_LEVELS:
        raise LaunchArgumentError(f"log_level:={log_level!r}: expected one of {LOG_LEVELS}")
    executor = values.get("executor", "single_threaded").strip() or "single_threaded"
    if executor not in EXECUTORS:
        raise LaunchArgumentError(f"executor:={executor!r}: expected one of "
                                  f"{', '.join(EXECUTORS)}")
    overrides = parameter_overrides(values)
    # Keys no other file of the process uses, so each file ranks where it is written (see
    # the module's docstring): the launch files' own default under the user's file
    # (autostart only when neither the file nor the argument says otherwise), the arguments
    # the user set over it.
    file_keys = params_file_keys(params_file) if params_file else set()
    default_key, arguments_key = unused_keys(file_keys, 2)
    parameters: list[Any] = [KeyedParameters(default_key, {"autostart": True})]
    if params_file:
        parameters.append(params_file)
    if overrides:
        parameters.append(KeyedParameters(arguments_key, overrides))
    image = values.get("image", "image").strip() or "image"
    remappings = [("image", image), ("image/compressed", f"{image}/compressed"),
                  ("depth", values.get("depth", "depth").strip() or "depth"),
                  ("camera_info", values.get("camera_info", "camera_info").strip()
                   or "camera_info")]
    profile = values.get("fastdds_profile", default_profile).strip()
    environment = {}
    if profile:
        environment["FASTDDS_DEFAULT_PROFILES_FILE"] = os.environ.get(
            "FASTDDS_DEFAULT_PROFILES_FILE", profile) if profile == default_profile else profile
    namespace = values.get("namespace", "").strip()
    cameras_text = values.get("cameras", "").strip()
    max_batch_text = values.get("max_batch", "").strip()
    # Only when chosen: the default leaves the command line as it was.
    arguments: list[str] = ["--executor", executor] if executor != "single_threaded" else []
    if max_batch_text:
        if not max_batch_text.isdigit() or not 1 <= int(max_batch_text) <= 16:
            raise LaunchArgumentError(f"max_batch:={max_batch_text!r}: expected 1..16")
        if kind != "pipeline" and not cameras_text:
            raise LaunchArgumentError("max_batch applies to node:=pipeline or cameras:=[...]")
        arguments += ["--max-batch", max_batch_text]
    if cameras_text:
        for argument, topic in (("image", image), ("depth", remappings[2][1]),
                                ("camera_info", remappings[3][1])):
            if topic.startswith("/"):
                raise LaunchArgumentError(
                    f"{argument}:={topic!r} with cameras: give a relative topic (e.g. "
                    "color/image_raw), read in each camera's namespace; an absolute one would "
                    f"feed every camera the same {argument.replace('_', ' ')}")
        if values.get("name", "").strip():
            raise LaunchArgumentError("name cannot be set with cameras (the nodes are named "
                                      "segmenter/tracker in each camera's namespace)")
        kinds = "segmenter,tracker" if kind == "pipeline" else kind
        # The namespace goes into the camera names: a process-wide namespace would put every
        # camera's nodes in one namespace.
        arguments = ["--cameras", *parse_cameras(cameras_text, namespace), "--nodes", kinds,
                     *arguments]
        result = LaunchPlan(executable="pipeline", name=None, namespace="", lifecycle=False,
                            parameters=parameters, remappings=remappings,
                            ros_arguments=["--log-level", log_level], environment=environment,
                            arguments=arguments)
        return _with_warnings(result, params_file, file_keys, outer_namespace)
    single = kind != "pipeline"
    result = LaunchPlan(
        executable=kind,
        name=(values.get("name", "").strip() or kind) if single else None,
        namespace=namespace,
        lifecycle=single,
        parameters=parameters,
        remappings=remappings,
        ros_arguments=["--log-level", log_level],
        environment=environment,
        arguments=arguments,
    )
    return _with_warnings(result, params_file, file_keys, outer_namespace)


def _with_warnings(result: LaunchPlan, params_file: str, file_keys: set[str],
                   outer_namespace: str) -> LaunchPlan:
    if params_file:
        warning = params_file_warning(params_file, file_keys, result.node_names(outer_namespace))
        if warning:
            result.warnings.append(warning)
    return result
