"""The method registry is the one source of a method: params validation, params.yaml, the README
table and the study's method list follow from it, and adding a method takes the steps the
README's "Adding a method" lists, and no others."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
import yaml

from pipeline.quantizers.registry import METHODS, TABLE_BEGIN, markdown_table, method_of, readme_with_table
from tests.conftest import REPO


def test_readme_method_table_is_made_from_the_registry():
    readme = (REPO / "README.md").read_text()
    assert readme_with_table(readme) == readme, \
        "README's method table is out of date: run `python -m pipeline.quantizers.registry --readme`"
    assert markdown_table() in readme and TABLE_BEGIN in readme


def test_params_yaml_has_a_section_per_method():
    """DVC reads params ``quantizer.<method>`` for train_vq, so the section of every method must exist."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["quantizer"]
    missing = [m for m in METHODS if m not in raw]
    assert not missing, f"params.yaml lacks quantizer sections {missing} (add `<name>: {{}}` for a method without options)"


def test_every_class_finds_its_own_options():
    for name, method in METHODS.items():
        assert method_of(method.load()) is method, name


def test_params_validation_needs_no_torch():
    code = ("import sys; from pipeline.config import load_params; load_params('params.yaml'); "
            "import pipeline.quantizers.registry; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr


# -- adding a method ---------------------------------------------------------------------------
NEW_METHOD_FILE = '''\
"""Weighted VQ (a throwaway method for tests/test_registry.py): the VQ-VAE losses with a
codebook-term weight w.

    z_q  = z + sg(q - z)                                 (STE)
    loss = w ||sg(z) - q||^2 + beta ||z - sg(q)||^2      (means)
"""
from __future__ import annotations

from .vq import TableQuantizer


class WeightedVQ(TableQuantizer):
    def quantize_flat(self, z):
        idx, _ = self.search(z)
        q = self.embedding[idx]
        loss = (self.options.weight * (q - z.detach()).pow(2).mean()
                + self.beta * (z - q.detach()).pow(2).mean())
        return z + (q - z).detach(), idx, loss
'''

NEW_OPTIONS = '''

@dataclass
class WeightedVQOptions:
    """Weighted VQ (a test's throwaway method)."""
    weight: float = param(0.5, ge=0, doc="weight of the codebook term")
'''

NEW_LINE = ('    Method("weighted_vq", _Q + "weighted_vq:WeightedVQ", WeightedVQOptions,\n'
            '           "VQ with a weighted codebook term", "a test"),\n')

NEW_TEST = '''\
import torch

from pipeline.quantizers.weighted_vq import WeightedVQ


def test_weighted_vq_loss_hand_case():
    q = WeightedVQ(2, 2, beta=0.25)
    with torch.no_grad():
        q.embedding.copy_(torch.tensor([[0.0, 0.0], [2.0, 0.0]]))
    out = q(torch.tensor([[0.5, 0.0], [1.5, 1.0]]))
    assert out.indices.tolist() == [0, 1]
    assert abs(out.loss.item() - (0.5 + 0.25) * 0.375) < 1e-6    # mean squared error 0.375
'''


@pytest.mark.slow
def test_a_new_method_is_a_file_a_registry_entry_a_params_section_and_a_test(tmp_path):
    """In a copy of the repository, add a method exactly as the README says, then run the
    contract tests (parametrized over METHODS), the registry checks and the study's method list."""
    repo = tmp_path / "repo"
    for name in ("pipeline", "stages", "tests", "tools"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("params.yaml", "README.md", "pyproject.toml", "dvc.yaml"):
        shutil.copy(REPO / name, repo / name)
    # 1. the method file
    (repo / "pipeline/quantizers/weighted_vq.py").write_text(NEW_METHOD_FILE)
    # 2. the registry: the options dataclass and one line
    reg = repo / "pipeline/quantizers/registry.py"
    text = reg.read_text()
    text = text.replace("\n\n# " + "-" * 94 + "\n# the registry", NEW_OPTIONS + "\n\n# " + "-" * 94 + "\n# the registry", 1)
    text = text.replace('    Method("noise_sub",', NEW_LINE + '    Method("noise_sub",', 1)
    reg.write_text(text)
    # 3. params.yaml: its section
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("  noise_sub: {}\n", "  noise_sub: {}\n  weighted_vq:\n    weight: 0.5\n"))
    # 4. its formula test
    (repo / "tests/test_weighted_vq.py").write_text(NEW_TEST)
    # (the README table is generated, not written)
    run = dict(cwd=repo, capture_output=True, text=True, timeout=900)
    gen = subprocess.run([sys.executable, "-m", "pipeline.quantizers.registry", "--readme"], **run)
    assert gen.returncode == 0, gen.stderr
    assert "`weighted_vq`" in (repo / "README.md").read_text()

    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                            "tests/test_weighted_vq.py", "tests/test_registry.py", "tests/test_model_io.py",
                            "tests/test_quantizer_methods.py", "-k", "weighted_vq or registry or readme or params_yaml",
                            "-rA"], **run)
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]
    ran = [line for line in tests.stdout.splitlines() if line.startswith("PASSED") and "weighted_vq" in line]
    # the contract (1 and 2 levels), optimisation, chunking, N x K, model file round trips, the formula test
    assert len(ran) >= 8, tests.stdout[-3000:]

    study = subprocess.run([sys.executable, "-m", "pipeline.study", "--dry-run", "--methods", "all",
                            "--codebook-sizes", "16"], **run)
    assert study.returncode == 0 and "quantizer.method=weighted_vq" in study.stdout, study.stdout + study.stderr
    check = textwrap.dedent("""
        from pipeline.config import load_params
        p = load_params("params.yaml")
        assert p.quantizer.weighted_vq.weight == 0.5
    """)
    assert subprocess.run([sys.executable, "-c", check], **run).returncode == 0
