"""
The README and the manual (docs/) say what a newcomer types: these tests keep it true.
Every C{twistd streamd} command they show is parsed by streamd's own options, with the
config files their commands write, so a renamed key, flag or source kind fails here
rather than on a reader's machine; every TOML block parses; every link of the README
leads to a file. Nothing is served: the other tests run the features themselves.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from streamd.tap import Options

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

#: The repository: the first parent holding pyproject.toml (wherever this file's room is).
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: The manual's pages (not what a build writes under docs/_build or docs/_generated).
PAGES = sorted(p for p in DOCS.rglob("*.rst")
               if not any(part.startswith("_") for part in p.relative_to(DOCS).parts))

#: Where an example needs what the test extras do not install, or a file it cannot make.
NEEDS = {"spool": "the streamd-spool example plugin (pip install ./examples/streamd-spool)"}


def shell_blocks(path: Path) -> list[str]:
    """The shell examples of a page: fenced C{sh} blocks (Markdown), C{code:: sh} (rst)."""
    text = path.read_text()
    if path.suffix == ".md":
        return re.findall(r"```sh\n(.*?)```", text, re.S)
    blocks = []
    for m in re.finditer(r"^\.\. code:: sh\n\n((?:   .*\n|\n)+)", text, re.M):
        blocks.append("\n".join(line[3:] for line in m.group(1).splitlines()))
    return blocks


def toml_blocks(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".md":
        return re.findall(r"```toml\n(.*?)```", text, re.S)
    return ["\n".join(line[3:] for line in m.group(1).splitlines())
            for m in re.finditer(r"^\.\. code:: toml\n\n((?:   .*\n|\n)+)", text, re.M)]


def twistd_commands(path: Path) -> list[tuple[str, str]]:
    """
    Each C{twistd streamd} command of a page, with the shell lines before it in its block
    that write files (C{cat > F <<'TOML'} heredocs, C{printf ... > F}, C{openssl req}).
    """
    found = []
    for block in shell_blocks(path):
        setup: list[str] = []
        lines = iter(block.splitlines())
        for line in lines:
            if line.startswith("cat > ") and "<<'" in line:
                end = line.split("<<'")[1].rstrip("'")
                body = [line]
                for more in lines:
                    body.append(more)
                    if more == end:
                        break
                setup.append("\n".join(body))
            elif re.match(r"(printf .*> \S+\.toml|openssl req )", line):
                setup.append(line)
            elif "bin/twistd" in line:
                found.append(("\n".join(setup), line))
    return found


def all_commands() -> list[tuple[str, str, str]]:
    return [(f"{p.relative_to(ROOT)}:{i}", setup, cmd)
            for p in [README, *PAGES] for i, (setup, cmd) in enumerate(twistd_commands(p))]


@pytest.mark.parametrize("where,setup,command", all_commands(),
                         ids=[where for where, _, _ in all_commands()])
def test_every_twistd_command_shown_parses(where, setup, command, tmp_path, monkeypatch):
    if "openssl req" in setup and shutil.which("openssl") is None:
        pytest.skip("openssl not on PATH: the TLS example's certificate cannot be made")
    subprocess.run(["bash", "-c", setup], cwd=tmp_path, check=True, capture_output=True)
    for kind, what in NEEDS.items():
        if f'source = "{kind}"' in setup or f'source = \\"{kind}\\"' in setup:
            pytest.skip(f"{where} needs {what}")
    monkeypatch.chdir(tmp_path)
    # Shell syntax after the command (`; echo "exit status $?"`) is not twistd's.
    words = shlex.split(command.split(";")[0])
    args = words[words.index("streamd") + 1:]
    if "bad.toml" in args:
        with pytest.raises(SystemExit) as e:
            Options().parseOptions(args)
        assert e.value.code == 2, where
        return
    Options().parseOptions(args)


def test_the_pages_show_twistd_commands():
    # The parse test above would pass on a page whose commands it failed to find.
    assert len(all_commands()) >= 15


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_toml_block_parses(path):
    for block in toml_blocks(path):
        tomllib.loads(block)


def test_readme_stays_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) < 500
    # .ci/run runs the line after this one: the quick start's test command.
    at = lines.index("# install and run the tests")
    assert "pytest" in lines[at + 1]


def test_readme_links_lead_to_files():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text)
    assert any(t.startswith("docs/") for t in targets)
    for target in targets:
        assert (ROOT / target).exists(), target


def test_every_docs_page_is_linked_from_the_readme_or_the_index():
    readme = README.read_text()
    index = (DOCS / "index.rst").read_text()
    for page in PAGES:
        name = str(page.relative_to(DOCS).with_suffix(""))
        if name in ("index", "changelog", "api", "development"):
            continue
        assert f"docs/{name}.rst" in readme or f"   {name}\n" in index, name
