"""Preprocessing: comments, line statements, escapes, block shorthand, sub-templates, source markers."""

from __future__ import annotations

import pytest

from forgather.config.environment import ConfigEnvironment
from forgather.config.origin import Origin
from forgather.config.preprocess import (
    MARK_CLOSE,
    MARK_OPEN,
    SourceMap,
    find_trailing_comment,
    split_subtemplates,
    strip_markers,
    translate_line_statements,
)

pytestmark = pytest.mark.unit


def render(text: str, **variables) -> str:
    env = ConfigEnvironment()
    env.add_template("t", text)
    return env.render("t", **variables).text


# ---- comments ---------------------------------------------------------------------------------


def test_whole_line_comment_renders_nothing():
    assert render("a: 1\n## a comment\nb: 2") == "a: 1\nb: 2"


def test_indented_whole_line_comment_renders_nothing():
    assert "comment" not in render("a:\n    ## indented comment\n    b: 2")


def test_whole_line_comment_keeps_line_count():
    assert translate_line_statements("a\n## c\nb").count("\n") == 2


def test_trailing_comment_after_whitespace_is_removed():
    assert translate_line_statements("a: 1   ## the value") == "a: 1"


def test_trailing_comment_after_tab_is_removed():
    assert translate_line_statements("a: 1\t## the value") == "a: 1"


def test_double_hash_without_leading_whitespace_is_kept():
    assert translate_line_statements("a: b##c") == "a: b##c"


def test_single_hash_is_left_for_yaml():
    assert translate_line_statements("a: 1 # yaml comment") == "a: 1 # yaml comment"


def test_trailing_comment_inside_double_quotes_is_kept():
    assert translate_line_statements('a: "x ## y"') == 'a: "x ## y"'


def test_trailing_comment_inside_single_quotes_is_kept():
    assert translate_line_statements("a: 'x ## y'") == "a: 'x ## y'"


def test_trailing_comment_after_quoted_value_is_removed():
    assert translate_line_statements("a: 'x ## y'   ## comment") == "a: 'x ## y'"


def test_escaped_quote_in_double_quotes_does_not_end_the_string():
    assert translate_line_statements(r'a: "say \" ## no"') == r'a: "say \" ## no"'


def test_doubled_single_quote_does_not_end_the_string():
    assert translate_line_statements("a: 'it''s ## kept'") == "a: 'it''s ## kept'"


def test_apostrophe_inside_a_word_does_not_open_a_quote():
    assert translate_line_statements("a: don't ## comment") == "a: don't"


def test_unclosed_quote_does_not_hide_a_comment():
    assert translate_line_statements("a: 'open ## comment") == "a: 'open"


def test_find_trailing_comment_reports_position():
    assert find_trailing_comment("abc ## x") == 4
    assert find_trailing_comment("abc") == -1


def test_comment_inside_quoted_value_survives_rendering_and_parsing():
    from forgather.config.graph import load_config_string

    config = load_config_string('title: "Tour ## not a comment"   ## a comment')
    assert config.build("title") == "Tour ## not a comment"


# ---- line statements --------------------------------------------------------------------------


def test_dash_statement_becomes_block_tag():
    assert translate_line_statements("-- set x = 1") == "{% set x = 1 %}"


def test_left_trim_statement_strips_whitespace_before():
    assert translate_line_statements("<< if x") == "{%- if x %}"


def test_right_trim_statement_strips_whitespace_after():
    assert translate_line_statements(">> endif") == "{% endif -%}"


def test_expression_statement_becomes_output():
    assert translate_line_statements("== foo") == "{{ foo }}"


def test_trimmed_expression_statement_trims_newlines():
    assert translate_line_statements("=> foo") == "{{ foo|trim('\\n') }}"


def test_indented_line_statement_is_recognized():
    assert translate_line_statements("    -- set x = 1") == "{% set x = 1 %}"


def test_expression_statement_drops_the_lines_indentation():
    assert render("a:\n    == 'v: 1'") == "a:\nv: 1"


def test_marker_needs_following_whitespace():
    assert translate_line_statements("--x") == "--x"
    assert translate_line_statements("==x") == "==x"


def test_marker_inside_a_line_is_plain_text():
    assert translate_line_statements("a: == b") == "a: == b"


def test_dash_statement_renders_a_loop():
    text = "items:\n-- for i in range(3)\n  - {{ i }}\n-- endfor\n"
    assert render(text) == "items:\n  - 0\n  - 1\n  - 2\n"


def test_left_trim_statement_joins_with_previous_line():
    assert render("a: 1\n<< if true\nb: 2\n-- endif") == "a: 1b: 2\n"


def test_right_trim_statement_strips_following_indentation():
    assert render("x: [\n>> if true\n      1]\n-- endif") == "x: [\n1]\n"


def test_expression_statement_renders_value():
    assert render("== 'a' ~ 'b'") == "ab"


def test_trimmed_expression_strips_surrounding_newlines():
    assert render("[\n=> '\\n\\nv\\n\\n'\n]") == "[\nv\n]"


def test_untrimmed_expression_keeps_surrounding_newlines():
    assert render("[\n== '\\nv\\n'\n]") == "[\n\nv\n\n]"


def test_trailing_comment_after_line_statement_is_removed():
    assert translate_line_statements("-- set x = 1 ## why") == "{% set x = 1 %}"


# ---- escapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ["--", "<<", ">>", "==", "=>", "##"])
def test_backslash_keeps_marker_line_literal(marker):
    assert translate_line_statements(f"\\{marker} text") == f"{marker} text"


def test_backslash_keeps_indentation_of_escaped_line():
    assert translate_line_statements("    \\-- text") == "    -- text"


def test_escaped_block_bracket_is_literal():
    assert translate_line_statements("\\[name]") == "[name]"


def test_escaped_dash_line_renders_literally():
    assert render("a: |\n  \\-- dashes\n  \\== equals") == "a: |\n  -- dashes\n  == equals"


# ---- block shorthand --------------------------------------------------------------------------


def test_bracket_line_opens_a_block():
    source = translate_line_statements("[body]\na: 1")
    assert source.startswith("{% block body %}")
    assert source.endswith("{% endblock body %}")


def test_bracket_block_runs_until_next_bracket_at_same_indentation():
    source = translate_line_statements("[a]\nx: 1\n[b]\ny: 2")
    assert source.index("{% endblock a %}") < source.index("{% block b %}")


def test_indented_bracket_block_nests_inside_outer_block():
    source = translate_line_statements("[outer]\nx: 1\n    [inner]\n    y: 2\n[after]\nz: 3")
    lines = source.split("\n")
    assert lines[2] == "{% block inner %}"
    # inner closes before outer, and both close before `after` opens
    closing = lines[4]
    assert closing.index("endblock inner") < closing.index("endblock outer")
    assert closing.index("endblock outer") < closing.index("block after")


def test_bracket_line_at_lower_indentation_closes_nested_blocks():
    text = "[a]\n  [b]\n    [c]\n    v: 1\n[d]\nw: 2"
    source = translate_line_statements(text)
    assert source.count("endblock") == 4
    assert [line for line in render(text).splitlines() if line] == ["    v: 1", "w: 2"]


def test_bracket_blocks_close_at_end_of_template():
    source = translate_line_statements("[a]\n    [b]\n    x")
    assert source.endswith("{% endblock b %}{{ '\\n' }}{% endblock a %}")


def test_bracket_block_renders_its_content():
    assert render("[body]\na: 1\nb: 2") == "a: 1\nb: 2\n"


def test_trimming_bracket_block_trims_output():
    assert render("[value!]\n\n   spaced   \n\n") == "spaced"


def test_trimming_bracket_block_value_can_be_used_inline():
    assert render("[name!]\n  tour\n[body]\nrun: {{ self.name() }}") == "tourrun: tour\n"


def test_bracket_line_with_trailing_comment_is_a_block():
    assert translate_line_statements("[body]   ## the body").startswith("{% block body %}")


def test_bracket_with_other_text_is_plain_yaml():
    assert translate_line_statements("[a, b]") == "[a, b]"
    assert translate_line_statements("key: [a]") == "key: [a]"


def test_bracket_block_can_be_overridden_by_a_child():
    env = ConfigEnvironment()
    env.add_template("parent", "[body]\na: 1\n")
    env.add_template("child", "-- extends 'parent'\n[body]\n== super()\nb: 2\n")
    assert [line for line in env.render("child").text.splitlines() if line] == ["a: 1", "b: 2"]


# ---- sub-templates ----------------------------------------------------------------------------


def test_split_subtemplates_names_each_chunk():
    chunks = split_subtemplates("main\n#---- first.sub ----\none\n#---- second ----\ntwo", "file")
    assert [c.name for c in chunks] == ["file", "first.sub", "second"]
    assert [c.text for c in chunks] == ["main", "one", "two"]


def test_split_subtemplates_records_first_file_line():
    chunks = split_subtemplates("a\nb\n#---- s ----\nc\nd\n# --- t ---\ne", "f")
    assert [c.first_line for c in chunks] == [1, 4, 7]


def test_separator_needs_three_dashes_each_side():
    chunks = split_subtemplates("a\n#-- s --\nb", "f")
    assert len(chunks) == 1


def test_separator_allows_slashes_and_dots_in_names():
    chunks = split_subtemplates("a\n#---- dir/x.y-z ----\nb", "f")
    assert chunks[1].name == "dir/x.y-z"


def test_subtemplate_is_addressable_after_its_file_is_loaded(tmp_path):
    (tmp_path / "file.yaml").write_text("main: 1\n#---- file.sub ----\nsub: 2\n")
    env = ConfigEnvironment([tmp_path])
    env.render("file.yaml")
    assert env.render("file.sub").text == "sub: 2"


def test_subtemplate_lines_are_numbered_as_in_the_file(tmp_path):
    path = tmp_path / "file.yaml"
    path.write_text("main: 1\n\n#---- file.sub ----\n\nsub: 2\n")
    env = ConfigEnvironment([tmp_path])
    env.render("file.yaml")
    rendered = env.render("file.sub")
    assert rendered.text.splitlines()[1] == "sub: 2"
    assert rendered.origin(2) == Origin(str(path), 5, "file.sub")


def test_subtemplate_error_names_its_file_line(tmp_path):
    from forgather.config.errors import UndefinedVariableError

    path = tmp_path / "file.yaml"
    path.write_text("main: 1\n#---- file.sub ----\nok: 1\nbad: {{ nope }}\n")
    env = ConfigEnvironment([tmp_path])
    env.render("file.yaml")
    with pytest.raises(UndefinedVariableError) as info:
        env.render("file.sub")
    assert (info.value.origin.file, info.value.origin.line) == (str(path), 4)


def test_main_template_stops_at_first_separator(tmp_path):
    (tmp_path / "file.yaml").write_text("main: 1\n#---- file.sub ----\nsub: 2\n")
    env = ConfigEnvironment([tmp_path])
    assert env.render("file.yaml").text == "main: 1"


# ---- source markers ---------------------------------------------------------------------------


def test_rendered_text_has_no_markers():
    text = render("a: 1\n-- for i in range(2)\nb{{ i }}: 2\n-- endfor")
    assert MARK_OPEN not in text and MARK_CLOSE not in text


def test_each_rendered_line_maps_to_its_template_line():
    env = ConfigEnvironment()
    env.add_template("t", "a: 1\n-- set x = 2\n\nb: {{ x }}")
    rendered = env.render("t")
    assert rendered.text == "a: 1\n\nb: 2"
    assert rendered.origin(1).line == 1
    assert rendered.origin(3).line == 4


def test_loop_lines_map_to_the_loop_body_line():
    env = ConfigEnvironment()
    env.add_template("t", "-- for i in range(3)\nk{{ i }}: {{ i }}\n-- endfor")
    rendered = env.render("t")
    assert [rendered.origin(n).line for n in (1, 2, 3)] == [2, 2, 2]


def test_origin_of_a_line_past_the_end_is_none():
    env = ConfigEnvironment()
    env.add_template("t", "a: 1")
    assert env.render("t").origin(99) is None


def test_marker_lookalike_text_is_kept():
    lookalike = f"{MARK_OPEN}99999{MARK_CLOSE}"
    assert render(f"a: {lookalike}") == f"a: {lookalike}"


def test_marker_lookalike_at_line_start_does_not_break_origins():
    lookalike = f"{MARK_OPEN}99999{MARK_CLOSE}"
    env = ConfigEnvironment()
    env.add_template("t", f"a: 1\n{lookalike}b: 2")
    rendered = env.render("t")
    assert rendered.text == f"a: 1\n{lookalike}b: 2"
    assert rendered.origin(2).line == 2


def test_source_map_round_trips_an_origin():
    source_map = SourceMap()
    origin = Origin("f.yaml", 3, "f.yaml")
    marked = source_map.mark("x: 1", "f.yaml", 3, "f.yaml")
    clean, origins = source_map.split(marked)
    assert clean == "x: 1"
    assert origins == [origin]


def test_strip_markers_removes_every_marker():
    source_map = SourceMap()
    marked = source_map.mark("a\nb", "f", 1, "f")
    assert strip_markers(marked) == "a\nb"


def test_markers_are_not_put_inside_jinja_tags():
    source_map = SourceMap()
    marked = source_map.mark("{{ 'a\nb' }}\nc", "f", 1, "f")
    assert marked.split("\n")[1] == "b' }}"
