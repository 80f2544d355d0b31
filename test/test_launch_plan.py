"""The launch files' decisions (`sam3_ros.launch_plan`), tested without `launch`."""

from __future__ import annotations

import pytest

from sam3_ros.launch_plan import (
    LAUNCH_ARGUMENTS,
    NODE_KINDS,
    KeyedParameters,
    LaunchArgumentError,
    key_matches,
    params_file_keys,
    parse_prompts,
    plan,
    unused_keys,
)

PROFILE = "/opt/share/sam3_ros/config/fastdds_large_frames.xml"


def _values(**set_args: str) -> dict[str, str]:
    values = {name: default for name, (default, _) in LAUNCH_ARGUMENTS.items()}
    values["fastdds_profile"] = PROFILE
    values.update(set_args)
    return values


def test_every_argument_has_a_description():
    for name, (_, description) in LAUNCH_ARGUMENTS.items():
        assert len(description) > 10, name


def test_unset_arguments_never_override_the_params_file(tmp_path):
    params = tmp_path / "mine.yaml"
    params.write_text("/**/segmenter:\n  ros__parameters:\n    model: /my/ckpt\n")
    result = plan(_values(params_file=str(params)), PROFILE)
    # The file comes after the launch files' own defaults; nothing the user did not set
    # follows it.
    assert result.parameters == [KeyedParameters("/**", {"autostart": True}), str(params)]


def test_set_arguments_override_the_params_file(tmp_path):
    params = tmp_path / "mine.yaml"
    params.write_text("{}\n")
    result = plan(_values(params_file=str(params), model="/x", device="cpu", dtype="bfloat16",
                          prompts="[mug, bottle]", input_kind="compressed",
                          use_sim_time="true", autostart="false"), PROFILE)
    assert result.parameters[1] == str(params)
    assert result.parameters[2] == KeyedParameters("/**/*", {
        "model": "/x", "device": "cpu", "dtype": "bfloat16", "prompts": ["mug", "bottle"],
        "input_kind": "compressed", "use_sim_time": True, "autostart": False})


@pytest.mark.parametrize(("taken", "expected"), [
    (set(), ["/**", "/**/*"]),
    ({"/**/segmenter", "/front/segmenter"}, ["/**", "/**/*"]),
    ({"/**"}, ["/**/*", "/**/**/*"]),
    ({"/**", "/**/*", "/**/**/*"}, ["/**/**/**/*", "/**/**/**/**/*"]),
])
def test_the_launch_files_own_keys_are_none_of_the_users(taken, expected):
    assert unused_keys(taken, 2) == expected


@pytest.mark.parametrize(("text", "keys"), [
    ("/**/segmenter:\n  ros__parameters:\n    model: a\n", {"/**/segmenter"}),
    ("segmenter:\n  ros__parameters: {}\n/**:\n  ros__parameters: {}\n",
     {"/segmenter", "/**"}),
    ("robot:\n  front:\n    segmenter:\n      ros__parameters: {model: a}\n"
     "  wrist:\n    tracker:\n      ros__parameters: {}\n",
     {"/robot/front/segmenter", "/robot/wrist/tracker"}),
    # rcl compares only the prefix of the key that ends a node name.
    ("/**/*:\n  ros__parameters_x: {}\n", {"/**/*"}),
    # Several documents: rcl reads them all.
    ("/**:\n  ros__parameters: {a: 1}\n---\n/**/segmenter:\n  ros__parameters: {b: 2}\n",
     {"/**", "/**/segmenter"}),
    ("", set()),
    ("# only a comment\n", set()),
])
def test_params_file_keys_as_rcl_reads_them(tmp_path, text, keys):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    assert params_file_keys(str(path)) == keys


@pytest.mark.parametrize(("text", "match"), [
    ("/**/segmenter: [unclosed\n", "cannot be read as YAML"),
    ("- a\n- b\n", "expected a mapping of node names"),
    ("/**:\n  ros__parameters: {}\n---\n- a\n", "expected a mapping of node names"),
])
def test_a_params_file_that_is_not_a_parameter_file_is_refused(tmp_path, text, match):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(LaunchArgumentError, match=match):
        plan(_values(params_file=str(path)), PROFILE)


def test_the_plans_keys_avoid_the_users_keys(tmp_path):
    params = tmp_path / "mine.yaml"
    params.write_text("/**:\n  ros__parameters: {use_sim_time: true}\n"
                      "/**/*:\n  ros__parameters: {model: /a}\n")
    result = plan(_values(params_file=str(params), model="/x"), PROFILE)
    own = [entry for entry in result.parameters if isinstance(entry, KeyedParameters)]
    assert [entry.key for entry in own] == ["/**/**/*", "/**/**/**/*"]
    assert own[1].yaml_text() == "/**/**/**/*:\n  ros__parameters:\n    model: /x\n"


@pytest.mark.parametrize(("text", "expected"), [
    ("person", ["person"]),
    ("[person]", ["person"]),
    ("[mug, bottle]", ["mug", "bottle"]),
    ("'red mug'", ["red mug"]),
    ("red mug", ["red mug"]),
    ("['']", [""]),
    ("[]", [""]),
    ("42", ["42"]),
    ("mug: red", ["mug: red"]),
])
def test_prompts_accept_one_phrase_or_a_list(text, expected):
    assert parse_prompts(text) == expected


@pytest.mark.parametrize("text", ["[[a]]", "{a: 1}", "true", "[true]"])
def test_prompts_refuse_what_is_not_phrases(text):
    with pytest.raises(LaunchArgumentError, match="prompts"):
        parse_prompts(text)


@pytest.mark.parametrize(("args", "match"), [
    ({"node": "detector"}, "node"),
    ({"autostart": "yes please"}, "autostart"),
    ({"use_sim_time": "maybe"}, "use_sim_time"),
    ({"log_level": "loud"}, "log_level"),
    ({"params_file": "/no/such/file.yaml"}, "params_file"),
    ({"cameras": "{a: 1}"}, "cameras"),
    ({"cameras": "[]"}, "cameras"),
    ({"cameras": "[front, front]"}, "listed twice"),
    ({"cameras": "[front, front:tracker]"}, "listed twice"),
    ({"cameras": "[front, wrist:detector]"}, "node kinds after ':'"),
    ({"cameras": "[wrist:tracker+tracker]"}, "node kinds after ':'"),
    ({"cameras": "['wrist:']"}, "node kinds after ':'"),
    ({"cameras": "[wrist:]"}, "expected a list of camera names"),
    ({"cameras": "[':tracker']"}, "no camera name"),
    ({"cameras": "{front: 3}"}, "a mapping gives each camera"),
    ({"cameras": "{front: []}"}, "a mapping gives each camera"),
    ({"cameras": "{front: [segmenter, detector]}"}, "node kinds after ':'"),
    ({"cameras": "[front, wrist]", "image": "/front/image"}, "relative topic"),
    # Every camera would read the one depth image / intrinsics: wrong 3D for all but one.
    ({"cameras": "[front, wrist]", "depth": "/cam/aligned_depth/image_raw"},
     "depth:='/cam/aligned_depth/image_raw' with cameras: give a relative topic"),
    ({"cameras": "[front, wrist]", "camera_info": "/cam/color/camera_info"},
     "camera_info:='/cam/color/camera_info' with cameras: give a relative topic"),
    ({"cameras": "[front, wrist]", "name": "seg"}, "name cannot be set"),
    ({"node": "pipeline", "max_batch": "0"}, "max_batch"),
    ({"node": "pipeline", "max_batch": "many"}, "max_batch"),
    ({"max_batch": "2"}, "max_batch applies to"),
    ({"executor": "multi_threaded"}, "executor:='multi_threaded': expected one of"),
])
def test_bad_arguments_are_refused_with_the_argument_named(args, match):
    with pytest.raises(LaunchArgumentError, match=match):
        plan(_values(**args), PROFILE)


@pytest.mark.parametrize("kind", NODE_KINDS)
def test_node_kinds_names_and_remappings(kind):
    result = plan(_values(node=kind, namespace="front", image="/front/color/image_raw",
                          depth="/front/depth", camera_info="/front/color/camera_info"),
                  PROFILE)
    assert result.executable == kind
    assert result.namespace == "front"
    if kind == "pipeline":
        assert result.name is None and not result.lifecycle
    else:
        assert result.name == kind and result.lifecycle
    assert dict(result.remappings) == {
        "image": "/front/color/image_raw", "image/compressed": "/front/color/image_raw/compressed",
        "depth": "/front/depth", "camera_info": "/front/color/camera_info"}
    assert result.ros_arguments == ["--log-level", "info"]


def test_node_name_argument_renames_a_single_node():
    assert plan(_values(name="wrist_segmenter"), PROFILE).name == "wrist_segmenter"


def test_fastdds_profile_environment(monkeypatch):
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    assert plan(_values(), PROFILE).environment == {"FASTDDS_DEFAULT_PROFILES_FILE": PROFILE}
    # A profile already in the environment wins over the package's default...
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/mine.xml")
    assert plan(_values(), PROFILE).environment == {"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}
    # ... but not over an explicit argument; '' leaves the environment alone.
    explicit = plan(_values(fastdds_profile="/arg.xml"), PROFILE)
    assert explicit.environment == {"FASTDDS_DEFAULT_PROFILES_FILE": "/arg.xml"}
    assert plan(_values(fastdds_profile=""), PROFILE).environment == {}


@pytest.mark.parametrize(("kind", "nodes"), [("segmenter", "segmenter"), ("tracker", "tracker"),
                                             ("pipeline", "segmenter,tracker")])
def test_cameras_start_one_pipeline_process_with_namespaced_cameras(kind, nodes):
    result = plan(_values(node=kind, cameras="[front, wrist]", namespace="robot",
                          image="color/image_raw", max_batch="2"), PROFILE)
    assert result.executable == "pipeline" and result.name is None and not result.lifecycle
    # The namespace is folded into the camera names: a process-wide one would merge them.
    assert result.namespace == ""
    assert result.arguments == ["--cameras", "/robot/front", "/robot/wrist", "--nodes", nodes,
                                "--max-batch", "2"]
    assert dict(result.remappings)["image"] == "color/image_raw"


@pytest.mark.parametrize("cameras", [
    "[front, wrist:tracker, base:segmenter+tracker]",
    "{front: segmenter, wrist: tracker, base: [segmenter, tracker]}",
])
def test_cameras_may_name_their_own_node_kinds(cameras):
    result = plan(_values(cameras=cameras, namespace="robot"), PROFILE)
    front = "/robot/front" if cameras.startswith("[") else "/robot/front:segmenter"
    assert result.arguments == ["--cameras", front, "/robot/wrist:tracker",
                                "/robot/base:segmenter+tracker", "--nodes", "segmenter"]


@pytest.mark.parametrize(("args", "namespace"), [
    # A LifecycleNode needs a string: None made `ros2 launch sam3_ros segmenter.launch.py`
    # (no namespace) fail with an invalid transition_event topic name.
    ({}, ""),
    ({"node": "tracker", "namespace": "wrist"}, "wrist"),
    # The pipeline's Node gets None: '' would become __ns:=/ over the cameras' namespaces.
    ({"node": "pipeline"}, None),
    ({"cameras": "[front, wrist]"}, None),
    ({"node": "pipeline", "namespace": "robot"}, "robot"),
])
def test_the_action_namespace_suits_the_launch_ros_action(args, namespace):
    assert plan(_values(**args), PROFILE).action_namespace == namespace


def test_one_camera_name_and_max_batch_for_the_pipeline():
    assert plan(_values(cameras="front"), PROFILE).arguments == [
        "--cameras", "/front", "--nodes", "segmenter"]
    assert plan(_values(node="pipeline", max_batch="3"), PROFILE).arguments == [
        "--max-batch", "3"]
    assert plan(_values(), PROFILE).arguments == []


def test_the_executor_argument_reaches_every_executable():
    assert plan(_values(executor="events"), PROFILE).arguments == ["--executor", "events"]
    assert plan(_values(node="tracker", executor="events"), PROFILE).arguments == [
        "--executor", "events"]
    assert plan(_values(cameras="[front]", executor="events", max_batch="2"),
                PROFILE).arguments == ["--cameras", "/front", "--nodes", "segmenter",
                                       "--executor", "events", "--max-batch", "2"]
    # The default leaves the command line as it was.
    assert plan(_values(executor="single_threaded"), PROFILE).arguments == []


@pytest.mark.parametrize(("args", "outer", "names"), [
    ({}, "", ["/segmenter"]),
    ({"node": "tracker", "namespace": "robot/wrist", "name": "trk"}, "", ["/robot/wrist/trk"]),
    ({"node": "pipeline", "namespace": "robot"}, "", ["/robot/segmenter", "/robot/tracker"]),
    ({"node": "pipeline"}, "/arm", ["/arm/segmenter", "/arm/tracker"]),
    # launch_ros puts a pushed namespace in front of a relative namespace only.
    ({"node": "segmenter", "namespace": "wrist"}, "/arm", ["/arm/wrist/segmenter"]),
    ({"node": "segmenter", "namespace": "/robot"}, "/arm", ["/robot/segmenter"]),
    ({"cameras": "[front, wrist:tracker, base:segmenter+tracker]", "namespace": "r"}, "",
     ["/r/front/segmenter", "/r/wrist/tracker", "/r/base/segmenter", "/r/base/tracker"]),
])
def test_the_plan_knows_its_node_names(args, outer, names):
    assert plan(_values(**args), PROFILE).node_names(outer) == names


@pytest.mark.parametrize(("key", "name", "matches"), [
    ("/**", "/segmenter", True),
    ("/**/segmenter", "/robot/front/segmenter", True),
    ("/**/segmenter", "/segmenter", True),
    ("/*/segmenter", "/front/segmenter", True),
    ("/*/segmenter", "/robot/front/segmenter", False),
    ("/segmenter", "/robot/segmenter", False),
    ("/robot/front/segmenter", "/robot/front/segmenter", True),
    ("/**/tracker", "/robot/segmenter", False),
])
def test_params_file_keys_match_node_names_as_rcl_does(key, name, matches):
    assert key_matches(key, name) is matches


@pytest.mark.parametrize(("text", "args", "outer", "warned"), [
    ("/**/segmenter:\n  ros__parameters: {}\n", {}, "", False),
    ("/segmenter:\n  ros__parameters: {}\n", {"namespace": "robot"}, "", True),
    ("/**/segmenter:\n  ros__parameters: {}\n", {"name": "front_seg"}, "", True),
    ("/**/tracker:\n  ros__parameters: {}\n", {"node": "segmenter"}, "", True),
    ("/**/tracker:\n  ros__parameters: {}\n", {"node": "pipeline"}, "", False),
    # The key names the pushed namespace: it applies.
    ("/arm/segmenter:\n  ros__parameters: {}\n", {}, "/arm", False),
    ("/robot/front/segmenter:\n  ros__parameters: {}\n",
     {"cameras": "[front, wrist]", "namespace": "robot"}, "", False),
    ("/front/segmenter:\n  ros__parameters: {}\n",
     {"cameras": "[front, wrist]", "namespace": "robot"}, "", True),
    ("{}\n", {}, "", False),  # no keys: nothing to match
])
def test_a_params_file_that_applies_to_no_node_is_warned_about(tmp_path, text, args, outer,
                                                               warned):
    params = tmp_path / "mine.yaml"
    params.write_text(text)
    result = plan(_values(params_file=str(params), **args), PROFILE, outer_namespace=outer)
    assert bool(result.warnings) is warned, result.warnings
    if warned:
        assert "matches a node of this launch" in result.warnings[0]
        assert "it changes nothing" in result.warnings[0]
