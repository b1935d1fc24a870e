"""The typed config: one dataclass field per schema key, built from the schema's defaults."""

from dataclasses import asdict, fields

import pytest
import yaml

from selectflow.config import SECTIONS, SelectionConfig, build_config, from_param, param_before_fps, selection_section
from selectflow.configdoc import SCHEMA
from selectflow.runtime.errors import SelectFlowError
from selectflow.schema import schema_default, with_defaults
from tests.workflow import REPO

SCHEMA_DOC = yaml.safe_load(SCHEMA.read_text())


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_each_section_has_exactly_the_schema_keys(name):
    keys = set(SCHEMA_DOC["properties"][name]["properties"])
    assert {f.name for f in fields(SECTIONS[name])} == keys


def test_defaults_come_from_the_schema_and_sections_are_frozen():
    cfg = build_config(with_defaults({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}, SCHEMA_DOC))
    sel = SCHEMA_DOC["properties"]["selection"]["properties"]
    assert cfg.selection.selection_percentage == sel["selection_percentage"]["default"]
    assert cfg.retry.factor == SCHEMA_DOC["properties"]["retry"]["properties"]["factor"]["default"]
    with pytest.raises(AttributeError):
        cfg.selection.metric = "l2"  # frozen


def test_train_config_has_exactly_the_train_schema_keys():
    from selectflow.config import NESTED, TrainConfig
    from selectflow.schema import train_schema

    keys = train_schema()["properties"]
    assert [f.name for f in fields(TrainConfig)] == list(keys)
    for name, cls in NESTED.items():
        assert [f.name for f in fields(cls)] == list(keys[name]["properties"])


def test_train_sections_are_resolved_once_with_the_warmup_overrides():
    from selectflow.config import TrainConfig

    raw = {
        "datasets": {"a": "a.jsonl"},
        "model": {"path": "m"},
        "train": {"preset": "minimal", "max_steps": 7, "lora": {"r": 4}},
        "warmup": {"train": {"max_steps": 2}},
    }
    cfg = build_config(with_defaults(raw, SCHEMA_DOC))
    train, warmup = cfg.train.settings, cfg.warmup.train
    assert isinstance(train, TrainConfig) and cfg.train.enabled and cfg.train.model_path is None
    assert (train.micro_batch_size, train.gradient_accumulation_steps, train.max_steps, train.lora.r) == (1, 8, 7, 4)
    assert (warmup.max_steps, warmup.micro_batch_size, warmup.lora.r) == (2, 1, 4)
    with pytest.raises(AttributeError):
        train.lora.r = 8  # frozen


def test_a_shared_answer_cap_without_the_pass_is_an_error():
    from selectflow.runtime.errors import SelectFlowError

    raw = {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}
    bound = schema_default("selection", "shared_answer_max_samples") + 1
    off = {"shared_answer_min_words": None}
    with pytest.raises(SelectFlowError, match=f"shared_answer_max_samples: {bound} .*set shared_answer_min_words"):
        build_config(with_defaults({**raw, "selection": {**off, "shared_answer_max_samples": bound}}, SCHEMA_DOC))
    # the default bound is not used when the pass is off: no error
    assert build_config(with_defaults({**raw, "selection": off}, SCHEMA_DOC)).selection.shared_answer_min_words is None
    on = {"shared_answer_max_samples": bound, "shared_answer_min_words": 4}
    sel = build_config(with_defaults({**raw, "selection": on}, SCHEMA_DOC)).selection
    assert (sel.shared_answer_min_words, sel.shared_answer_max_samples) == (4, bound)


@pytest.mark.parametrize("weight", ["quality", "lof"])
@pytest.mark.parametrize("diversity", ["facility_location", "kmeans", "stratified"])
def test_an_fps_weight_without_fps_is_an_error(diversity, weight):
    from selectflow.runtime.errors import SelectFlowError

    raw = {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}
    sel = {"diversity": diversity, "fps_weight": weight}
    with pytest.raises(
        SelectFlowError, match=f"fps_weight: {weight} .*diversity is {diversity},.*set fps_weight: none"
    ):
        build_config(with_defaults({**raw, "selection": sel}, SCHEMA_DOC))
    assert (
        build_config(with_defaults({**raw, "selection": {**sel, "diversity": "fps"}}, SCHEMA_DOC)).selection.fps_weight
        == weight
    )
    assert (
        build_config(with_defaults({**raw, "selection": {**sel, "fps_weight": "none"}}, SCHEMA_DOC)).selection.diversity
        == diversity
    )
    # the default weight (lof_cut) weighs FPS only: another diversity leaves it unused, with no error
    default = build_config(with_defaults({**raw, "selection": {"diversity": diversity}}, SCHEMA_DOC)).selection
    assert (default.diversity, default.fps_weight) == (diversity, "lof_cut")


@pytest.mark.parametrize("diversity", ["facility_location", "kmeans"])
@pytest.mark.parametrize(
    ("key", "default", "off"),
    [("fps_quality_hold_back", 0.05, 0), ("fps_relevance_hold_back", 0, 0), ("fps_boilerplate_cut_z", 3.5, None)],
)
def test_fps_hold_backs_need_fps(diversity, key, default, off):
    from selectflow.runtime.errors import SelectFlowError

    raw = {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}
    sel = {"diversity": diversity, key: 0.1}
    written = "null" if off is None else off
    with pytest.raises(SelectFlowError, match=f"{key}: 0.1 .*diversity is .*set {key}: {written}, or diversity"):
        build_config(with_defaults({**raw, "selection": sel}, SCHEMA_DOC))
    fps = build_config(with_defaults({**raw, "selection": {**sel, "diversity": "fps"}}, SCHEMA_DOC)).selection
    assert getattr(fps, key) == 0.1
    # the default and the off value hold back from FPS only: another diversity leaves them unused, with no error
    found = build_config(with_defaults({**raw, "selection": {"diversity": diversity}}, SCHEMA_DOC)).selection
    assert getattr(found, key) == default
    unset = {**sel, key: off}
    assert getattr(build_config(with_defaults({**raw, "selection": unset}, SCHEMA_DOC)).selection, key) == off


def test_stratified_reads_the_hold_backs_and_not_fps_snap():
    from selectflow.runtime.errors import SelectFlowError

    raw = {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}
    held = {"fps_weight": "lof_cut", "fps_quality_hold_back": 0.1, "fps_relevance_hold_back": 0.1}
    held["fps_boilerplate_cut_z"] = 2.5
    sel = build_config(with_defaults({**raw, "selection": {"diversity": "stratified", **held}}, SCHEMA_DOC)).selection
    assert {key: getattr(sel, key) for key in held} == held
    none = {"diversity": "stratified", "fps_weight": "none", "fps_quality_hold_back": 0, "fps_boilerplate_cut_z": None}
    assert build_config(with_defaults({**raw, "selection": none}, SCHEMA_DOC)).selection.fps_weight == "none"
    snap = {"diversity": "stratified", "fps_snap": "density"}
    with pytest.raises(SelectFlowError, match="fps_snap: density .*diversity is stratified.*or diversity: fps$"):
        build_config(with_defaults({**raw, "selection": snap}, SCHEMA_DOC))


def test_a_bad_train_key_is_named():
    from selectflow.runtime.errors import SelectFlowError

    raw = {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "warmup": {"train": {"batch_size": 4}}}
    with pytest.raises(SelectFlowError, match="train.batch_size"):
        build_config(with_defaults(raw, SCHEMA_DOC))


@pytest.mark.parametrize(
    "values, key",
    [
        ({"batch_size": None}, "train.batch_size"),
        ({"lora": {"rank": None}}, "train.lora.rank"),
        ({"lora": 4}, "train.lora"),
        ({"warmup_ratio": 1.0}, "train.warmup_ratio"),
    ],
)
def test_resolving_the_train_settings_names_a_bad_key_even_a_null_one(values, key):
    from selectflow.config import resolve_train_config

    with pytest.raises(SelectFlowError, match=f"'{key}' is"):
        resolve_train_config(values)


def test_sections_travel_as_plain_params_and_come_back_equal():
    # Snakemake's params rerun trigger compares only builtin values: a section must travel as a mapping
    from selectflow.config import as_param, from_param

    cfg = build_config(with_defaults({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}, SCHEMA_DOC))
    for value in (cfg.selection, cfg.index, cfg.compare, cfg.warmup, cfg.train.settings):
        param = as_param(value)
        assert isinstance(param, dict) and "object at 0x" not in repr(param)
        assert from_param(type(value), param) == value


@pytest.mark.parametrize(
    "config, words",
    [
        ({"datasets": {"a": "a.jsonl"}}, ["'model' is missing", "model:", "path:", "{path: proxy}"]),
        (
            {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": {"selection_percentag": 0.1}},
            ["'selection.selection_percentag' is not a config key; did you mean 'selection_percentage'?"],
        ),
        (
            {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": {"routing_strata": "4"}},
            ["'selection.routing_strata' is '4', it must be a whole number"],
        ),
        (
            {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": {"near_duplicate_threshold": 1.5}},
            ["'selection.near_duplicate_threshold' is 1.5, it must be at most 1"],
        ),
        (
            {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": {"metric": "cosin"}},
            ["'selection.metric' is 'cosin', it must be one of wasserstein, cosine, l2; did you mean 'cosine'?"],
        ),
        (
            {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "wramup": {}},
            ["'wramup' is not a config key; did you mean 'warmup'?"],
        ),
        (
            {"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}, "selection": 0.05},
            ["'selection' is 0.05, it must be a mapping"],
        ),
    ],
)
def test_config_mistakes_are_named_in_a_few_lines(config, words):
    from selectflow.schema import check_against_schema

    with pytest.raises(SelectFlowError) as err:
        check_against_schema(config, "my.yaml")
    text = str(err.value)
    assert text.startswith("my.yaml: 1 config mistake") and len(text.splitlines()) <= 20
    assert all(w in text for w in words), text
    assert "properties" not in text and "$schema" not in text


def test_many_config_mistakes_stay_under_twenty_lines():
    from selectflow.schema import check_against_schema

    bad = {
        "selection": {f"key{i}": i for i in range(30)},
        "router_dump": {"batch_size": "x", "max_length": -1},
        "index": {"window_size": 0},
        "shard_size": "big",
    }
    with pytest.raises(SelectFlowError) as err:
        check_against_schema(bad, "my.yaml")
    text = str(err.value)
    assert len(text.splitlines()) <= 20 and "more; fix these and run again" in text, text
    check_against_schema({"datasets": {"a": "a.jsonl"}, "model": {"path": "m"}}, "my.yaml")  # valid: no error


def test_presets_are_the_schema_presets_and_resolve_to_valid_settings():
    import jsonschema

    from selectflow.config import resolve_train_config
    from selectflow.presets import BASE, PRESET_KEYS, PRESETS
    from selectflow.schema import schema_enum, train_schema

    assert set(PRESETS) == set(schema_enum(None, "preset", "train.schema.yaml")) - {None}
    for name, values in {**PRESETS, "(none)": BASE}.items():
        assert set(values) == set(PRESET_KEYS), name
    for name in [None, *PRESETS]:
        resolved = resolve_train_config({"preset": name})
        jsonschema.validate(asdict(resolved), train_schema())
        assert all(getattr(resolved, key) is not None for key in PRESET_KEYS)


def _schema_enums(node, where=""):
    """(key, set of allowed strings) of every enum of two or more strings in a schema node."""
    if isinstance(node, dict):
        values = [v for v in node.get("enum", []) if isinstance(v, str)]
        if len(values) >= 2:
            yield where, set(values)
        for key, sub in node.items():
            yield from _schema_enums(sub, f"{where}.{key}" if key not in ("properties", "items") else where)


def test_no_enum_of_a_config_key_is_written_outside_the_schemas():
    # a tuple / list / set of strings in the package that equals a key's allowed values is a copy of the schema:
    # it must be read with schema_enum instead, or it drifts when the schema grows a value
    import ast

    from selectflow.schema import schema

    enums = [*_schema_enums(schema()), *_schema_enums(schema("train.schema.yaml"), "train")]
    assert len(enums) >= 10  # the scan sees the schema's enums
    copies = []
    for path in sorted((REPO / "selectflow").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, (ast.Tuple, ast.List, ast.Set))
                and len(node.elts) >= 2
                and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts)
            ):
                found = {e.value for e in node.elts}
                copies += [
                    f"{path.relative_to(REPO)}:{node.lineno} copies {key}" for key, vals in enums if found == vals
                ]
    assert not copies, copies


def _schema_defaults(node, where=""):
    """(dotted key, default) of every key of a schema node that has a default and is no section."""
    for key, sub in node.get("properties", {}).items():
        if sub.get("type") == "object":
            yield from _schema_defaults(sub, f"{where}{key}.")
        elif "default" in sub:
            yield f"{where}{key}", sub["default"]


def _package_functions():
    """(module:qualified name, function) of every function and method defined in selectflow/."""
    import importlib
    import inspect
    import pkgutil

    import selectflow

    for info in pkgutil.walk_packages(selectflow.__path__, "selectflow."):
        if info.name.endswith(".__main__"):  # runs the command line on import
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            members = vars(obj).values() if inspect.isclass(obj) else [obj]
            for member in members:
                fn = inspect.unwrap(getattr(member, "__func__", member))
                if inspect.isfunction(fn) and fn.__module__ == module.__name__:
                    yield f"{module.__name__}:{fn.__qualname__}", fn


# (module or module:function, parameter) -> why its default is no copy of a config key's
DEFAULT_COPIES_ALLOWED = {
    ("selectflow.data.realtext", "seed"): "the real-text-pool command's own seed (its --seed flag), no config key",
    ("selectflow.index.embed:load_encoder", "dtype"): "the encoder's dtype is no config key (router_dump.dtype is "
    "the router dump's)",
    ("selectflow.router.tinymoe", "seed"): "seed of the families check's tiny models, no config key",
    ("selectflow.router.tinymoe:tiny_config", "layers"): "layers of the families check's tiny models (the proxy is "
    "built from proxy.n_layers elsewhere)",
    ("selectflow.select.diversity:kmeans_round_robin", "seed"): "the selection section has no seed key",
    ("selectflow.select.strata", "seed"): "the selection section has no seed key",
    ("selectflow.train.evaluate:response_losses", "batch_size"): "scoring batch of the comparison's test losses, "
    "no config key",
}


def test_no_config_key_default_is_written_as_a_keyword_default():
    # the schema is the only place a config key's default is written: a parameter named like a key
    # (``metric`` for selection.metric, ``log_interval`` for selection.fps_log_interval) whose default is
    # that key's default is a copy; it must be required, so the caller passes the config's value.
    # None is no copy: it stands for "not given".
    import inspect

    from selectflow.schema import schema

    keys = [*_schema_defaults(schema()), *_schema_defaults(schema("train.schema.yaml"), "train.")]
    assert len(keys) >= 100  # the scan sees the schemas' keys
    functions = dict(_package_functions())
    assert "selectflow.select.fps:fps_streaming" in functions and len(functions) >= 500
    copies, allowed = [], set()
    for name, fn in functions.items():
        module = name.split(":")[0]
        for param in inspect.signature(fn).parameters.values():
            value = param.default
            if value is inspect.Parameter.empty or value is None:
                continue
            for key, default in keys:
                last = key.rsplit(".", 1)[-1]
                named_like = last == param.name or last.endswith(f"_{param.name}")
                if not (named_like and value == default and isinstance(value, bool) == isinstance(default, bool)):
                    continue
                entry = next(
                    (e for e in ((name, param.name), (module, param.name)) if e in DEFAULT_COPIES_ALLOWED), None
                )
                if entry is None:
                    copies.append(f"{name}({param.name}={value!r}) copies {key}")
                allowed.add(entry)
    assert not copies, copies
    assert set(DEFAULT_COPIES_ALLOWED) <= allowed, "allow-list entries that match nothing any more"


def _rule_blocks() -> dict[str, str]:
    """{rule name: its text} of every rule and checkpoint of rules/*.smk."""
    import re

    blocks = {}
    for path in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"^(?:rule|checkpoint) (\w+):\n", path.read_text(), flags=re.M)
        blocks.update(zip(parts[1::2], parts[2::2]))
    return blocks


def _params_of(block: str) -> set[str]:
    import re

    match = re.search(r"^    params:\n((?:        .*\n|\s*\n)+)", block, flags=re.M)
    return set(re.findall(r"^        (\w+)=", match.group(1), flags=re.M)) if match else set()


def test_every_script_gets_its_config_one_way_and_reads_every_param():
    # a rule passes each section its script needs as a param (job: run_job's settings); the script turns it
    # back with from_param and reads no raw config; a param no script reads is dropped
    import re

    scripts = 0
    for rule, block in _rule_blocks().items():
        script = re.search(r'^    script:\n        "\.\./(scripts/\w+\.py)"', block, flags=re.M)
        if not script:
            continue
        scripts += 1
        text = (REPO / script.group(1)).read_text()
        params = _params_of(block)
        assert "job" in params and "job=CFG.job," in block, rule
        read = set(re.findall(r"\bsm\.params\.(\w+)", text))
        assert params - {"job"} == read, (
            f"rule {rule}: params {sorted(params - {'job'})}, {script.group(1)} reads {sorted(read)}"
        )
        assert not re.search(r"\bsm\.config\b|build_config|\bsection\(", text), script.group(1)
    assert scripts >= 30


def test_rules_read_the_typed_config():
    # the raw config mapping is read only where common.smk checks it against the schema, and by the end summary
    for path in sorted((REPO / "rules").glob("*.smk")):
        if path.name not in ("common.smk", "console.smk"):
            assert "config[" not in path.read_text() and "config.get(" not in path.read_text(), path.name


def test_changing_how_jobs_run_reruns_nothing_but_a_section_change_does(tmp_path):
    # job=CFG.job travels as a dataclass, which Snakemake's params trigger skips; sections travel as mappings
    from tests.workflow import config_variant, ran_jobs, snakemake

    target = "resources/demo/demo_pool.jsonl"
    assert ran_jobs(snakemake(tmp_path, target, "--cores", "1", config=config_variant("small", tmp_path))) == [
        "demo_pool"
    ]
    for changes in ({"gpu_id": 0}, {"retry": {"factor": 3, "adaptive_chunks": False, "job_memory_budget_mb": 512}}):
        proc = snakemake(tmp_path, target, "-n", config=config_variant("small", tmp_path, **changes))
        assert ran_jobs(proc) == [] and "Nothing to be done" in proc.stdout + proc.stderr, changes
    proc = snakemake(tmp_path, target, "-n", config=config_variant("small", tmp_path, demo={"n_records": 99}))
    assert ran_jobs(proc) == ["demo_pool"] and "Params have changed" in proc.stdout + proc.stderr


def test_the_rules_before_fps_take_the_selection_without_its_fps_only_keys():
    # config.param_before_fps: changing an FPS-only key leaves the candidates' and compare's pool's params as
    # they were (no rerun of them nor of compare's baselines); any other key still changes them
    plain = param_before_fps(selection_section())
    fps = selection_section(
        fps_log_interval=7, fps_weight="quality", fps_snap="density", fps_snap_neighbors=5, fps_gpus=2
    )
    assert param_before_fps(fps) == plain
    assert param_before_fps(selection_section(diversity="kmeans", diversity_clusters=3, diversity_neighbors=4)) == plain
    assert param_before_fps(selection_section(quality_cut_z=2.0)) != plain
    assert param_before_fps(selection_section(routing_strata=7)) != plain
    assert from_param(SelectionConfig, param_before_fps(fps)) == selection_section()
