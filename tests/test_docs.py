"""The reference pages generated from the code (docs/generate.py) are the ones checked in, and the README
stays a front page."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_docs", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current():
    generator = load_generator()
    for name, build in generator.PAGES.items():
        assert (ROOT / "docs" / name).read_text() == build(), f"docs/{name} is stale: run `python docs/generate.py`"


def test_every_setting_has_a_documented_meaning():
    generator = load_generator()
    comments = generator._field_comments(ROOT / "imgq" / "settings.py")
    assert comments and all(comments.values()), [name for name, text in comments.items() if not text]


def test_readme_is_a_front_page_whose_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    import re

    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)(?:#[\w-]+)?\)", readme)
    assert "docs/cli.md" in links and all((ROOT / link).exists() for link in links), links
