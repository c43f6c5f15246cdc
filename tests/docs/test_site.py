"""The documentation site builds in strict mode (a broken link, anchor or API reference fails), its
generated pages hold what the code says, and the README's links land on real pages and headings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _page(site: Path, markdown_path: str) -> Path:
    name = markdown_path.removesuffix(".md")
    return site / "index.html" if name == "index" else site / name / "index.html"


def test_every_page_in_docs_is_built(site):
    for markdown in (ROOT / "docs").rglob("*.md"):
        assert _page(site, markdown.relative_to(ROOT / "docs").as_posix()).is_file(), markdown


def test_generated_reference_pages_hold_the_settings_and_commands(site):
    config = _page(site, "reference/config.md").read_text()
    for field in ("aggregation_max_norm_ratio", "generation_memory_mb", "kl_weight", "label_words"):
        assert field in config
    cli = _page(site, "reference/cli.md").read_text()
    assert "splitfed serve" in cli and "--seal-key-file" in cli
    api = _page(site, "reference/api.md").read_text()
    assert "split_model" in api and "SplitClient" in api


def test_benchmark_figures_are_published_with_the_pages_that_show_them(site):
    frontier = _page(site, "privacy_defenses.md").read_text()
    assert 'src="../results/privacy_frontier_smollm2.png"' in frontier
    assert (site / "results" / "privacy_frontier_smollm2.png").stat().st_size > 1000


def test_readme_links_land_on_pages_and_headings(site):
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+\.md)(?:#([^)]+))?\)", readme)
    assert len(links) >= 10
    for path, anchor in links:
        assert (ROOT / path).is_file(), path
        if anchor:
            html = _page(site, path.removeprefix("docs/")).read_text()
            assert f'id="{anchor}"' in html, f"{path}#{anchor}"


def test_readme_stays_a_landing_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 200
    quick_start = "\n".join(lines).split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\./scripts/\S+", quick_start, flags=re.MULTILINE)
    assert commands == ["./scripts/demo.sh", "./scripts/test.sh"]


def test_the_readme_library_example_runs(capsys):
    """The ten lines of the README run as written (on the tiny model instead of SmolLM2, for time)."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("## The library in ten lines", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert 'load_model("smollm2")' in code
    tiny = code.replace('load_model("smollm2")', 'load_model("tiny-llama")')
    tiny = tiny.replace("head=2, tail=2", "head=1, tail=1")  # the tiny model has 4 blocks
    exec(compile(tiny, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
