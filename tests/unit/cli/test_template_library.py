"""The template library: every template it ships has a header, is used the way its header says and
renders and validates there (a walk over `tlist`'s templates: a new template must join the walk),
and the generated catalogue page is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from forgather.cli.template_catalogue import LIBRARY, catalogue, header_of, templates_in

from .conftest import META, write

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]
BASE = LIBRARY / "base"


def included(
    name: str, block: str, *, extending: bool = False, metadata: tuple[str, ...] = ()
) -> str:
    """A config extending causal_lm.yaml that includes template `name` in `block` (after
    `== super()` when `extending`), with `metadata` lines set in config_metadata first."""
    text = '-- extends "training_script/causal_lm.yaml"\n'
    if metadata:
        text += "-- block config_metadata\n    == super()\n"
        text += "".join(f"    {line}\n" for line in metadata)
        text += "-- endblock config_metadata\n"
    if extending:
        return (
            text
            + f'-- block {block}\n    == super()\n    -- include "{name}"\n-- endblock {block}\n'
        )
    return text + f'-- block {block}\n-- include "{name}"\n-- endblock {block}\n'


MODEL_PATH = '-- set ns.model_path = "/models/some-model"'


def config_for(name: str) -> tuple[str, str | None]:
    """A config that uses template `name` as its header says, and the value `explain` must show
    (key, expected) or None."""
    if name == "config_type.yaml":
        return (
            '-- extends "config_type.yaml"\n-- block main_body\nmain: 1\n-- endblock main_body\n',
            None,
        )
    if name.startswith("training_script/"):
        return f'-- extends "{name}"\n', None
    if name.startswith("trainers/"):
        text = included(name, "trainer_args", extending=True)
        return text, f"trainer_args.parallelism={Path(name).stem}"
    if name == "optimizers/multiopt.yaml":
        text = included(name, "trainer", extending=True)
        return text, "trainer.optimizer_factory.groups.1.pattern=self_attn"
    if name.startswith("optimizers/"):
        text = included(name, "trainer_args", extending=True)
        return text, f"trainer_args.optim={Path(name).stem}"
    if name.startswith(("datasets/", "tokenizers/")):
        block = "datasets" if name.startswith("datasets/") else "tokenizer"
        text = included(name, block, metadata=(MODEL_PATH,))
        expected = {
            "datasets/streaming_text.yaml": "train_dataset.shuffle_buffer=256",
            "datasets/conversations.yaml": "train_dataset.desc=Tokenizing the train conversations",
            "datasets/tinystories.yaml": "train_dataset.desc=Tokenizing TinyStories (train)",
            "datasets/wikitext.yaml": "train_dataset.desc=Tokenizing WikiText (train)",
            "datasets/fineweb_edu.yaml": "train_dataset.shuffle_buffer=1024",
            "datasets/smollm.yaml": "train_dataset.weights=220",
        }
        return text, expected.get(name)
    if name.startswith(("models/", "callbacks/")):
        block = "model" if name.startswith("models/") else "trainer_callbacks"
        text = included(name, block, metadata=(MODEL_PATH, "-- set ns.num_hidden_layers = 2"))
        expected = {
            "models/llama.yaml": "model.num_hidden_layers=2",
            "models/mistral.yaml": "model.preset=tiny_mistral",
            "models/qwen3.yaml": "model.qk_norm=true",
            "models/gpt2.yaml": "model.preset=tiny_gpt2",
            "models/pretrained.yaml": "model.path=/models/some-model",
            "callbacks/default.yaml": "trainer_callbacks.control=TrainerControlCallback",
            "callbacks/minimal.yaml": "trainer_callbacks.json=JsonLinesLogger",
            "callbacks/full.yaml": "trainer_callbacks.sampled.seed=1234",
        }
        return text, expected[name]
    if name.startswith("inc/"):
        text = (
            f'-- import "{name}" as fmt\n'
            '-- extends "config_type.yaml"\n'
            "-- block main_body\n"
            '{{ fmt.h1("A heading") }}\n'
            "main: 1\n"
            "-- endblock main_body\n"
        )
        return text, None
    raise AssertionError(f"{name}: the walk does not know how this template is used; add it here")


LIBRARY_TEMPLATES = templates_in(BASE)
META_TEMPLATES = ("meta_defaults.yaml", "forgather_meta_defaults.yaml")  # every project's meta.yaml


def test_the_walk_covers_the_library():
    assert "training_script/causal_lm.yaml" in LIBRARY_TEMPLATES
    assert len(LIBRARY_TEMPLATES) >= 10


@pytest.mark.parametrize("name", LIBRARY_TEMPLATES)
def test_every_template_documents_itself_at_its_top(name):
    header = header_of(BASE / name)
    assert len(header.split()) >= 8, f"{name}: its first lines should say what it is (## ...)"


@pytest.mark.parametrize("name", [n for n in LIBRARY_TEMPLATES if n not in META_TEMPLATES])
def test_every_template_renders_and_validates_where_it_is_meant_to_be_used(cli, tmp_path, name):
    text, expected = config_for(name)
    root = tmp_path / "p"
    write(root / "meta.yaml", META.replace("a.yaml", "c.yaml"))
    (root / "templates" / "configs").mkdir(parents=True)
    (root / "templates" / "configs" / "c.yaml").write_text(text, encoding="utf-8")
    listed = cli("-p", root, "tlist", "--format", "files")
    assert listed.exit_code == 0 and name in listed.stdout, listed.output
    rendered = cli("-p", root, "pp")
    assert rendered.exit_code == 0, rendered.output
    validated = cli("-p", root, "validate")
    assert validated.exit_code == 0, validated.output
    if expected is not None:
        key, value = expected.split("=")
        explained = cli("-p", root, "explain", key)
        assert explained.exit_code == 0, explained.output
        assert value in explained.stdout and name in explained.stdout


def test_the_catalogue_page_is_current():
    page = REPO / "docs" / "configuration" / "template-library.md"
    assert page.read_text(encoding="utf-8") == catalogue(), (
        "regenerate it: python -m forgather.cli.template_catalogue > "
        "docs/configuration/template-library.md"
    )
