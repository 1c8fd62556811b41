"""examples/config_tour: every config renders, parses and builds, and shows what its header says."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from forgather.config import errors
from forgather.config.materialize import BuiltPartial
from forgather.config.nodes import iter_nodes
from forgather.project import MetaConfig, Project, load_project

pytestmark = pytest.mark.unit

TOUR = Path(__file__).resolve().parents[3] / "examples" / "config_tour"
CONFIGS_DIR = TOUR / "templates" / "configs"
CONFIGS = sorted(path.name for path in CONFIGS_DIR.glob("*.yaml"))
BUILD_VARS = {"output_dir": "/tmp/tour-output"}


def tour(name: str, **variables) -> Project:
    return Project(name, TOUR, **variables)


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


# ---- the project ------------------------------------------------------------------------------


def test_tour_has_at_least_ten_configs():
    assert len(CONFIGS) >= 10


def test_meta_lists_every_config():
    assert MetaConfig.load(TOUR).config_names() == CONFIGS


def test_meta_names_the_project():
    meta = MetaConfig.load(TOUR)
    assert meta.name == "Config Tour" and "tour" in meta.description


def test_meta_extends_meta_defaults():
    assert 'extends "meta_defaults.yaml"' in (TOUR / "meta.yaml").read_text()


def test_default_config_is_basics():
    assert MetaConfig.load(TOUR).default_config == "01_basics.yaml"


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_starts_with_a_header_comment(name):
    first = (CONFIGS_DIR / name).read_text().splitlines()[0]
    assert first.startswith("## ") and len(first) > 20


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_every_target(name):
    project = tour(name)
    built = project(project.targets, **BUILD_VARS)
    assert set(built) == set(project.targets)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_extends_the_project_template(name):
    project = tour(name)
    meta = project("meta")
    assert meta["config_class"] == "tour" and meta["tour"] is True
    assert meta["config_name"].startswith(name[:2])


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_imports_only_stdlib_or_project_files(name):
    for node in iter_nodes(tour(name).config.graph):
        spec = getattr(node, "spec", None)
        if spec and ":" in spec:
            module = spec.split(":")[0]
            assert module.startswith(str(TOUR)) or module.split(".")[0] in {
                "os",
                "fractions",
                "collections",
            }, spec


# ---- 01 basics --------------------------------------------------------------------------------


def test_basics_renders_expressions_and_loops():
    text = tour("01_basics.yaml").pp_config
    assert "    sizes: [1, 2, 3]" in text
    assert "    total: 6" in text
    assert "    alpha_length: !call:len alpha" in text
    assert "    nothing: null" in text


def test_basics_strips_comments_but_not_quoted_hashes():
    text = tour("01_basics.yaml").pp_config
    assert "## a scalar" not in text and "01 Basics:" not in text
    assert 'title: "Tour ## not a comment: inside quotes"' in text


def test_basics_builds_main():
    main = tour("01_basics.yaml")()
    assert main["greeting"] == "HELLO"
    assert main["sizes"] == [1, 2, 3] and main["total"] == 6
    assert main["release_date"] == "2024-01-01"
    assert main["data_dir"] == str(TOUR / "data")
    assert main["project_name"] == "config_tour"
    assert (main["alpha_length"], main["beta_length"]) == (5, 4)
    assert main["nothing"] is None


# ---- 02 sharing -------------------------------------------------------------------------------


def test_sharing_renders_each_tag():
    text = tour("02_sharing.yaml").pp_config
    assert "shared_list: &shared_list !singleton:list" in text
    assert "fresh_list: &fresh_list !factory:list" in text


def test_sharing_singletons_are_one_object():
    first, second = tour("02_sharing.yaml")()["singletons"]
    assert first is second and first == [1, 2, 3]


def test_sharing_factories_are_fresh():
    first, second = tour("02_sharing.yaml")()["factories"]
    assert first == second and first is not second


def test_sharing_call_tag_is_a_singleton():
    first, second = tour("02_sharing.yaml")()["calls"]
    assert first is second


def test_sharing_nothing_is_cached_across_builds():
    project = tour("02_sharing.yaml")
    assert project()["singletons"][0] is not project()["singletons"][0]


# ---- 03 partials ------------------------------------------------------------------------------


def test_partials_build_callables_and_call_them():
    main = tour("03_partials.yaml")()
    assert main["sorted_desc"] == [3, 2, 1]
    assert main["two_to_the_ten"] == 1024
    assert main["relabelled"] == {"kind": "label", "colour": "blue"}
    assert main["legacy_max"] == 0


def test_partials_share_the_singletons_of_their_build():
    main = tour("03_partials.yaml")()
    assert isinstance(main["collector"], BuiltPartial)
    assert main["collector"]()[0] is main["counter"]


def test_partials_append_positional_args_at_call_time():
    power = tour("03_partials.yaml")("power")
    assert power(3) == 8


def test_partials_use_the_deprecated_lambda_spelling():
    assert "!lambda:max [0]" in tour("03_partials.yaml").pp_config


# ---- 04 vars ----------------------------------------------------------------------------------


def test_vars_come_from_the_build():
    main = tour("04_vars.yaml")(output_dir="/out", seed=1, label="x")
    assert main == {"output_dir": "/out", "seed": 1, "label": "X"}


def test_vars_defaults_apply():
    main = tour("04_vars.yaml")(output_dir="/out")
    assert (main["seed"], main["label"]) == (1234, "DEFAULT")


def test_vars_without_a_value_or_default_are_an_error():
    with pytest.raises(errors.UnboundVarError, match="output_dir") as info:
        tour("04_vars.yaml")()
    assert info.value.origin.file == str(CONFIGS_DIR / "04_vars.yaml")


def test_vars_pp_config_is_the_rendered_text():
    project = tour("04_vars.yaml")
    assert project("with_config_text") == len(project.pp_config)


# ---- 05 dlist ---------------------------------------------------------------------------------


def test_dlist_child_deletes_replaces_and_appends():
    assert tour("05_dlist.yaml")("callbacks") == [
        "progress bar",
        "checkpoint every 500 steps",
        "early stopping",
    ]


def test_dlist_empty_list_is_extended_by_the_child():
    assert tour("05_dlist.yaml")("plugins") == ["profiler"]


def test_dlist_null_key_alone_is_empty():
    assert tour("05_dlist.yaml")("empty") == []


def test_dlist_parent_is_a_sub_template_of_the_same_file():
    text = (CONFIGS_DIR / "05_dlist.yaml").read_text()
    assert "#---- dlist.base ----" in text
    _, provenance = tour("05_dlist.yaml").config.lookup("callbacks.progress")
    assert provenance.origin.template == "dlist.base"
    assert provenance.origin.file == str(CONFIGS_DIR / "05_dlist.yaml")


def test_dlist_deleted_item_remembers_what_it_removed():
    value, provenance = tour("05_dlist.yaml").config.lookup("callbacks.logger")
    assert value is None
    assert [old for _, old in provenance.overrode] == ["text logger"]


# ---- 06 inheritance ---------------------------------------------------------------------------


def test_inheritance_child_values_win():
    args = tour("06_inheritance.yaml")("trainer_args")
    assert args == {"learning_rate": 0.0001, "max_steps": 50, "seed": 42, "warmup_steps": 100}


def test_inheritance_renders_every_level():
    text = lines(tour("06_inheritance.yaml").pp_config)
    assert text.index("learning_rate: 0.001") < text.index("learning_rate: 0.0005")
    assert text.index("learning_rate: 0.0005") < text.index("learning_rate: 0.0001")


def test_inheritance_provenance_walks_three_levels():
    _, provenance = tour("06_inheritance.yaml").config.lookup("trainer_args.learning_rate")
    templates = TOUR / "templates"
    assert (provenance.origin.file, provenance.origin.line) == (
        str(CONFIGS_DIR / "06_inheritance.yaml"),
        16,
    )
    assert [((o.file, o.line), value) for o, value in provenance.overrode] == [
        ((str(templates / "tour" / "grandparent.yaml"), 7), 0.001),
        ((str(templates / "tour" / "parent.yaml"), 6), 0.0005),
    ]


def test_inheritance_main_shares_trainer_args():
    trainer_args, main = tour("06_inheritance.yaml")("trainer_args", "main")
    assert main["trainer_args"] is trainer_args
    assert main["description"] == "fine-tuning run"


# ---- 07 include and extend --------------------------------------------------------------------


def test_include_and_extend_builds_the_specialized_optimizer():
    main = tour("07_include_and_extend.yaml")()
    assert main["built"] == {"name": "adamw", "lr": 0.0003, "momentum": 0.0}
    assert main["optimizer"](lr=1.0)["lr"] == 1.0


def test_include_and_extend_value_names_the_sub_template_line():
    _, provenance = tour("07_include_and_extend.yaml").config.lookup("optimizer.lr")
    path = CONFIGS_DIR / "07_include_and_extend.yaml"
    assert (provenance.origin.file, provenance.origin.line) == (str(path), 27)
    assert path.read_text().splitlines()[26].strip() == "lr: 0.0003"
    assert provenance.origin.template == "include_and_extend.optimizer"
    assert [value for _, value in provenance.overrode] == [0.1]


def test_include_and_extend_keeps_base_values_at_their_line():
    _, provenance = tour("07_include_and_extend.yaml").config.lookup("optimizer.momentum")
    assert provenance.origin.file == str(TOUR / "templates" / "tour" / "optimizer.yaml")


# ---- 08 file imports --------------------------------------------------------------------------


def test_file_imports_build_project_classes():
    main = tour("08_file_imports.yaml")()
    canvas = main["canvas"]
    assert canvas.title == "two shapes"
    assert [shape.name for shape in canvas.shapes] == ["rectangle", "small"]
    assert canvas.total_area() == 14


def test_file_imports_two_model_files_do_not_collide():
    main = tour("08_file_imports.yaml")()
    assert main["vision"] == "vision model of size 2"
    assert main["audio"] == "audio model of size 3"


def test_file_imports_relative_import_with_submodule_searchpath():
    assert tour("08_file_imports.yaml")()["area_m2"] == pytest.approx(1.0)


def test_file_imports_module_specs():
    main = tour("08_file_imports.yaml")()
    assert main["fraction"] == Fraction(3, 4) and main["joined"] == "a/b/c"


def test_file_imports_singleton_is_shared_with_the_canvas():
    rectangle, main = tour("08_file_imports.yaml")("rectangle", "main")
    assert main["canvas"].shapes[0] is rectangle


def test_file_imports_render_absolute_paths():
    assert (
        f"!call:{TOUR / 'modules' / 'vision' / 'model.py'}:describe"
        in tour("08_file_imports.yaml").pp_config
    )


# ---- 09 dynamic args --------------------------------------------------------------------------


def test_dynamic_args_defaults():
    assert tour("09_dynamic_args.yaml")() == {
        "name": "tour",
        "max_steps": 100,
        "run_name": "default-run",
    }


def test_dynamic_args_declares_flags():
    flags = tour("09_dynamic_args.yaml")("dynamic_args")
    assert [flag["names"] for flag in flags] == ["--max-steps", ["--run-name", "-n"]]


def test_dynamic_args_flags_and_overrides():
    project = load_project(
        TOUR, "09_dynamic_args.yaml", ["--max-steps", "5", "-n", "mine", "main.name=demo"]
    )
    assert project() == {"name": "demo", "max_steps": 5, "run_name": "mine"}
    _, steps = project.config.lookup("main.max_steps")
    assert steps.origin.kind == "dynamic-arg" and "--max-steps 5" in steps.origin.text
    _, name = project.config.lookup("main.name")
    assert name.origin.kind == "override" and name.origin.text == "main.name=demo"


def test_dynamic_args_as_jinja_variables():
    assert tour("09_dynamic_args.yaml", max_steps=7)()["max_steps"] == 7


# ---- 10 merge keys and anchors ----------------------------------------------------------------


def test_merge_keys_later_keys_win():
    main = tour("10_merge_keys_and_anchors.yaml")()
    assert main["merged"] == {"colour": "red", "size": 20, "shape": "square"}
    assert main["repeated"] == "second"


def test_merge_keys_plain_aliases_are_copies():
    main = tour("10_merge_keys_and_anchors.yaml")()
    assert main["plain_a"] == main["plain_b"] and main["plain_a"] is not main["plain_b"]


def test_merge_keys_singleton_aliases_are_shared():
    main = tour("10_merge_keys_and_anchors.yaml")()
    assert main["shared_a"] is main["shared_b"]


def test_merge_keys_dot_keys_are_not_targets():
    assert [t for t in tour("10_merge_keys_and_anchors.yaml").targets if t.startswith(".")] == []


# ---- 11 meta ----------------------------------------------------------------------------------


def test_meta_sees_raw_nodes():
    main = tour("11_meta.yaml")()
    assert main["kinds"] == {
        "a_list": "SingletonNode(list)",
        "a_factory": "FactoryNode(dict)",
        "a_partial": "PartialNode(max)",
        "a_var": "VarNode",
        "a_number": "int",
    }
    assert main["how_many"] == 3
    assert main["as_text"].startswith("SingletonNode('len'")


# ---- 12 positional args -----------------------------------------------------------------------


def test_positional_args_every_form():
    assert tour("12_positional_args.yaml")() == {
        "from_sequence": 32,
        "from_arg_keys": 8,
        "mixed": 255,
        "explicit": {"a": 1, "b": 2, "c": 3},
        "scalar": "HELLO",
        "quoted_scalar": 5,
        "empty_tuple": (),
        "a_tuple": (1, 2),
        "a_list": ["x", "y"],
    }


# ---- 13 latent args ---------------------------------------------------------------------------


def test_latent_args_merge_and_win():
    main = tour("13_latent_args.yaml")()
    assert main["settings"] == {"name": "computed", "depth": 2, "size": 64}
    assert main["from_var"] == {"fixed": True}


def test_latent_args_from_a_var():
    main = tour("13_latent_args.yaml")(extra={"more": 1})
    assert main["from_var"] == {"fixed": True, "more": 1}


# ---- 14 line statements -----------------------------------------------------------------------


def test_line_statements_render():
    text = tour("14_line_statements.yaml").pp_config
    assert 'joined: "a-b-c"' in text
    assert "-- this line starts with two dashes" in text
    assert "run_name: tour-run" in text


def test_line_statements_build():
    main = tour("14_line_statements.yaml")()
    assert main["joined"] == "a-b-c"
    assert main["captured"] == "[spaced out]"
    assert main["block_scalar"].splitlines() == [
        "-- this line starts with two dashes",
        "== and this one with two equals signs",
    ]
    assert main["untrimmed"] == "\n\nkept\n\n"
    assert main["trimmed"] == " kept "
    assert main["nested"] == {"alpha": 1, "beta": 2}


# ---- 15 generated -----------------------------------------------------------------------------


def test_generated_has_about_five_hundred_nodes():
    assert len(list(iter_nodes(tour("15_generated.yaml").config.graph))) >= 500


def test_generated_layers_build():
    main = tour("15_generated.yaml")()
    assert main["count"] == 125
    layer = main["layers"][7]
    assert layer["index"] == 7 and layer["weights"] == [7, 8] and layer["scale"] == 7.5
    assert layer["tags"] == ("layer", "7")
    assert layer["activation"] is main["layers"][0]["activation"]


def test_generated_size_is_a_jinja_variable():
    assert tour("15_generated.yaml", n_layers=3)()["count"] == 3


def test_generated_values_name_the_loop_line():
    _, provenance = tour("15_generated.yaml").config.lookup("layers.layer_9.index")
    assert provenance.origin.file == str(CONFIGS_DIR / "15_generated.yaml")
    assert provenance.origin.line == 18
