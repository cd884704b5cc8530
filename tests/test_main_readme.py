"""README.md's two set-up commands, the configs it names, and the CI floor (.ci/)."""
from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _first_sh_block() -> list[str]:
  match = re.search(r"^```sh\n(.*?)^```", README, re.S | re.M)
  assert match, "README.md has no ```sh block"
  return match.group(1).strip().splitlines()


def test_readme_starts_with_exactly_two_setup_commands():
  first, second = _first_sh_block()  # exactly two lines
  assert README.index("```sh") < README.index("\n## ")  # before the first section
  assert first == ("pip install -e . && python -m rap_jax.main --config configs/demo.py "
                   "--workdir runs/demo")
  assert second.startswith('pip install -e ".[test]" && python -m pytest ')
  assert (REPO / "configs" / "demo.py").is_file()


def test_ci_runs_the_readme_test_command():
  ci = (REPO / ".ci" / "run").read_text()
  # .ci/run takes the command from README.md itself (second line of the first sh block).
  assert "README.md" in ci and "sed -n 2p" in ci
  assert 'bash -c "$test_cmd"' in ci


def test_readme_names_existing_configs_and_lists_all_original_configs():
  named = set(re.findall(r"configs/[\w/]+\.py", README))
  assert named, "README names no config"
  for path in named:
    assert (REPO / path).is_file(), path
  results = README.split("## Results", 1)[1].split("\n## ", 1)[0]
  originals = {p.stem for p in (REPO / "configs").glob("*.py")
               if p.stem.startswith(("panoptic_fpn_", "rap_", "ocfusion_"))}
  assert len(originals) == 12
  for name in originals:
    assert f"`configs/{name}.py`" in results, name


def test_floor_is_not_above_the_collected_tests(request):
  lines = [l for l in (REPO / ".ci" / "test_floor").read_text().splitlines()
           if l.strip() and not l.startswith("#")]
  floor = int(lines[0])
  assert floor > 0
  files = {pathlib.Path(item.fspath).name for item in request.session.items}
  if files >= {p.name for p in (REPO / "tests").glob("test_*.py")}:  # the whole suite
    assert floor <= len(request.session.items), "lower .ci/test_floor or restore the tests"
