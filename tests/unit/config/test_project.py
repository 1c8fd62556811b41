"""Projects and workspaces: meta.yaml, search paths, config selection and the Project API."""

from __future__ import annotations

from pathlib import Path

import pytest

import forgather
from forgather.config import errors
from forgather.project import MetaConfig, Project, from_project
from forgather.workspace import (
    TEMPLATELIB_DIR,
    WORKSPACE_DIR,
    create_workspace,
    find_project_dir,
    find_workspace,
    meta_searchpath,
)

pytestmark = pytest.mark.unit

META = '-- extends "meta_defaults.yaml"\n'


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path) -> Path:
    """A project with two configs and a shared base template."""
    root = tmp_path / "proj"
    write(root, "meta.yaml", META)
    write(root, "templates/base.yaml", "main: !dict\n    -- block body\n    -- endblock body\n")
    write(
        root,
        "templates/configs/one.yaml",
        "-- extends 'base.yaml'\n[body]\n    name: one\n    size: {{ size | default(1) }}\n"
        "    seed: !var {name: seed, default: 0}\n"
        "shared: &s !singleton:list []\n"
        "pair: !tuple [*s, *s]\n",
    )
    write(root, "templates/configs/two.yaml", "main: !dict {name: two}\nother: !list [x]\n")
    return root


# ---- workspaces -------------------------------------------------------------------------------


def test_find_workspace_searches_upward(tmp_path):
    (tmp_path / WORKSPACE_DIR).mkdir()
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert find_workspace(deep) == tmp_path.resolve()


def test_find_workspace_prefers_the_nearest(tmp_path):
    (tmp_path / WORKSPACE_DIR).mkdir()
    (tmp_path / "inner" / WORKSPACE_DIR).mkdir(parents=True)
    assert find_workspace(tmp_path / "inner") == (tmp_path / "inner").resolve()


def test_find_workspace_without_one_is_none(tmp_path):
    if any((parent / WORKSPACE_DIR).is_dir() for parent in tmp_path.resolve().parents):
        pytest.skip("a directory above the test's tmp_path holds a workspace")
    assert find_workspace(tmp_path) is None


def test_find_project_dir_searches_upward(project):
    assert find_project_dir(project / "templates" / "configs") == project.resolve()


def test_meta_searchpath_order(tmp_path):
    paths = meta_searchpath(tmp_path, tmp_path.parent)
    assert paths[0] == str(tmp_path)
    assert paths[1] == str(tmp_path.parent / WORKSPACE_DIR)
    assert paths[-1] == str(TEMPLATELIB_DIR / "base")


def test_create_workspace_writes_meta_defaults(tmp_path):
    workspace = create_workspace(tmp_path, "WS", "a workspace")
    assert (workspace / "meta_defaults.yaml").is_file()
    assert "# WS" in (workspace / "README.md").read_text()


def test_create_workspace_refuses_to_overwrite(tmp_path):
    create_workspace(tmp_path, "WS")
    with pytest.raises(FileExistsError):
        create_workspace(tmp_path, "WS")


def test_workspace_meta_defaults_adds_search_directories(tmp_path):
    extra = tmp_path / "shared_templates"
    extra.mkdir()
    create_workspace(tmp_path, "WS", search_paths=[str(extra)])
    root = tmp_path / "group" / "proj"
    write(root, "meta.yaml", META)
    (root / "templates").mkdir()
    meta = MetaConfig.load(root)
    assert meta.workspace_root == tmp_path.resolve()
    assert meta.searchpath == [
        str((root / "templates").resolve()),
        str((tmp_path / WORKSPACE_DIR).resolve()),
        str(extra.resolve()),
        str((TEMPLATELIB_DIR / "base").resolve()),
    ]


def test_workspace_templates_are_found_by_projects(tmp_path):
    create_workspace(tmp_path, "WS")
    write(tmp_path, f"{WORKSPACE_DIR}/common.yaml", "common: true\n")
    root = tmp_path / "proj"
    write(root, "meta.yaml", META)
    write(root, "templates/configs/c.yaml", "-- include 'common.yaml'\n\nmain: 1\n")
    project = Project("c.yaml", root)
    assert project("common") is True


def test_workspace_root_global_is_the_workspace(tmp_path):
    create_workspace(tmp_path, "WS")
    root = tmp_path / "proj"
    write(root, "meta.yaml", META)
    write(root, "templates/configs/c.yaml", "main: {{ workspace_root | toyaml }}\n")
    assert Project("c.yaml", root)() == str(tmp_path.resolve())


# ---- meta.yaml --------------------------------------------------------------------------------


def test_meta_defaults_search_project_templates_then_the_library(project):
    meta = MetaConfig.load(project)
    assert meta.searchpath == [
        str((project / "templates").resolve()),
        str((TEMPLATELIB_DIR / "base").resolve()),
    ]


def test_meta_name_defaults_to_the_directory_name(project):
    assert MetaConfig.load(project).name == "proj"


def test_meta_name_and_description_come_from_meta_yaml(project):
    write(
        project,
        "meta.yaml",
        META + "-- block configs\nname: Named\ndescription: About\n-- endblock\n",
    )
    meta = MetaConfig.load(project)
    assert (meta.name, meta.description) == ("Named", "About")


def test_config_names_lists_configs_sorted(project):
    assert MetaConfig.load(project).config_names() == ["one.yaml", "two.yaml"]


def test_config_names_include_subdirectories(project):
    write(project, "templates/configs/sub/three.yml", "main: 3\n")
    assert "sub/three.yml" in MetaConfig.load(project).config_names()


def test_default_config_is_the_first_config(project):
    assert MetaConfig.load(project).default_config == "one.yaml"


def test_default_config_from_meta_yaml(project):
    write(project, "meta.yaml", META + "-- block configs\ndefault_config: two.yaml\n-- endblock\n")
    assert MetaConfig.load(project).default_config == "two.yaml"


def test_config_prefix_from_meta_yaml(project):
    write(
        project, "meta.yaml", META + "-- block configs\nconfig_prefix: experiments\n-- endblock\n"
    )
    write(project, "templates/experiments/exp.yaml", "main: experiment\n")
    meta = MetaConfig.load(project)
    assert meta.config_prefix == "experiments"
    assert meta.config_names() == ["exp.yaml"]
    assert Project("", project)() == "experiment"


def test_searchdir_from_meta_yaml_is_relative_to_the_project(project):
    write(project, "meta.yaml", "searchdir: [other, templates]\n")
    write(project, "other/configs/extra.yaml", "main: extra\n")
    meta = MetaConfig.load(project)
    assert meta.searchpath[:2] == [
        str((project / "other").resolve()),
        str((project / "templates").resolve()),
    ]
    assert meta.config_names() == ["extra.yaml", "one.yaml", "two.yaml"]


def test_earlier_search_directory_shadows_a_later_one(project):
    write(project, "meta.yaml", "searchdir: [other, templates]\n")
    write(project, "other/configs/two.yaml", "main: shadowed\n")
    assert Project("two.yaml", project)() == "shadowed"


def test_missing_search_directories_are_dropped(project):
    write(project, "meta.yaml", "searchdir: [absent, templates]\n")
    assert str((project / "absent").resolve()) not in MetaConfig.load(project).searchpath


def test_meta_yaml_can_use_project_globals(project):
    write(project, "meta.yaml", "description: {{ basename(project_dir) | toyaml }}\n")
    assert MetaConfig.load(project).description == "proj"


def test_empty_meta_yaml_uses_defaults(project):
    write(project, "meta.yaml", "")
    assert MetaConfig.load(project).config_prefix == "configs"


def test_meta_yaml_that_is_not_a_mapping_is_a_project_error(project):
    write(project, "meta.yaml", "- a list\n")
    with pytest.raises(errors.ProjectError, match="mapping"):
        MetaConfig.load(project)


@pytest.mark.parametrize("entry", ["searchdir: 5", "searchdir: !dict {}", "system_path: 5"])
def test_meta_path_entry_that_is_not_a_path_is_a_project_error(project, entry):
    write(project, "meta.yaml", f"name: x\n{entry}\n")
    meta = MetaConfig.load(project)
    with pytest.raises(errors.ProjectError, match="must be a path or a list of paths") as info:
        meta.searchpath, meta.system_path  # noqa: B018
    assert (info.value.origin.file, info.value.origin.line) == (
        str((project / "meta.yaml").resolve()),
        2,
    )


def test_system_path_lists_paths(project):
    write(project, "meta.yaml", "system_path: [/a, b]\n")
    assert MetaConfig.load(project).system_path == ["/a", "b"]


def test_directory_without_meta_yaml_is_a_project_error(tmp_path):
    with pytest.raises(errors.ProjectError, match="no meta.yaml"):
        MetaConfig.load(tmp_path)


def test_meta_yaml_error_names_its_line(project):
    write(project, "meta.yaml", "name: x\nbad: {{ nope }}\n")
    with pytest.raises(errors.UndefinedVariableError) as info:
        MetaConfig.load(project)
    assert (info.value.origin.file, info.value.origin.line) == (
        str((project / "meta.yaml").resolve()),
        2,
    )


# ---- Project ----------------------------------------------------------------------------------


def test_project_without_a_config_uses_the_default(project):
    assert Project("", project).config_name == "one.yaml"


def test_project_template_name_has_the_config_prefix(project):
    assert Project("two.yaml", project).template_name == "configs/two.yaml"


def test_project_call_without_targets_builds_main(project):
    assert Project("two.yaml", project)() == {"name": "two"}


def test_project_call_with_one_target_builds_it(project):
    assert Project("two.yaml", project)("other") == ["x"]


def test_project_call_with_several_targets_returns_a_tuple(project):
    assert Project("two.yaml", project)("main", "other") == ({"name": "two"}, ["x"])


def test_project_call_with_a_list_returns_a_dict(project):
    assert Project("two.yaml", project)(["main", "other"]) == {
        "main": {"name": "two"},
        "other": ["x"],
    }


def test_targets_of_one_call_share_singletons(project):
    shared, pair = Project("one.yaml", project)("shared", "pair")
    assert pair[0] is shared


def test_separate_calls_do_not_share_singletons(project):
    proj = Project("one.yaml", project)
    assert proj("shared") is not proj("shared")


def test_project_keyword_args_are_jinja_variables(project):
    assert Project("one.yaml", project, size=5)()["size"] == 5


def test_call_keyword_args_are_var_values(project):
    assert Project("one.yaml", project)(seed=9)["seed"] == 9


def test_project_targets_lists_top_level_keys(project):
    assert Project("one.yaml", project).targets == ["main", "shared", "pair"]


def test_project_pp_config_is_the_rendered_text(project):
    assert "name: one" in Project("one.yaml", project).pp_config


def test_project_found_from_a_subdirectory(project):
    assert Project("two.yaml", project / "templates").project_dir == project.resolve()


def test_project_accepts_an_absolute_config_path(project, tmp_path):
    path = write(tmp_path, "elsewhere/abs.yaml", "main: absolute\n")
    assert Project(str(path), project)() == "absolute"


def test_project_without_meta_yaml_is_a_project_error(tmp_path):
    with pytest.raises(errors.ProjectError, match="no meta.yaml"):
        Project("c.yaml", tmp_path / "nowhere")


def test_project_without_configs_is_a_project_error(tmp_path):
    write(tmp_path, "meta.yaml", META)
    with pytest.raises(errors.ProjectError, match="no configs"):
        Project("", tmp_path)


def test_unknown_config_is_a_template_not_found_error(project):
    with pytest.raises(errors.TemplateNotFoundError, match="configs/absent.yaml"):
        Project("absent.yaml", project)


def test_unknown_target_is_a_target_error(project):
    with pytest.raises(errors.TargetNotFoundError):
        Project("two.yaml", project)("absent")


def test_project_is_exported_lazily_from_the_package():
    assert forgather.Project is Project and forgather.from_project is from_project


# ---- from_project -----------------------------------------------------------------------------


def test_from_project_builds_main(project):
    assert from_project(project, "two.yaml") == {"name": "two"}


def test_from_project_builds_named_targets(project):
    assert from_project(project, "two.yaml", targets=["main", "other"]) == {
        "main": {"name": "two"},
        "other": ["x"],
    }


def test_from_project_passes_jinja_and_var_values(project):
    built = from_project(project, "one.yaml", pp_kwargs={"size": 4}, seed=3)
    assert (built["size"], built["seed"]) == (4, 3)


def test_from_project_works_from_a_config(project, tmp_path):
    other = tmp_path / "other"
    write(other, "meta.yaml", META)
    write(
        other,
        "templates/configs/c.yaml",
        f"main: !call:forgather:from_project\n  project_dir: {project}\n  config_template: two.yaml\n",
    )
    assert Project("c.yaml", other)() == {"name": "two"}
