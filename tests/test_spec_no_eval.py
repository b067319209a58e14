"""Nothing in a job spec is executed: values that look like Python code stay text (or are an
error), wherever they are written: a sweep expression, a string field, an override, a YAML tag.
"""

from __future__ import annotations

import pytest

from trainyard.cli import main
from trainyard.loader import SpecError, load_spec
from trainyard.sweep_space import parse_space_expr

CODE = "__import__('os').system('touch pwned')"

JOB = """\
name: no-eval
kind: rl
agent: {env: CartPole-v1}
"""


def _job(workdir, extra: str = ""):
    path = workdir / "job.yaml"
    path.write_text(JOB + extra)
    return path


@pytest.mark.parametrize("expr", [CODE, f"choice({CODE}, 1)", f"uniform(0, {CODE})",
                                  f"grid(1, {CODE})", "choice(eval('1'), 2)"])
def test_code_in_a_sweep_expression_is_a_grammar_error(workdir, expr):
    with pytest.raises(ValueError, match="cannot read"):
        parse_space_expr(expr)
    path = _job(workdir, f'sweep:\n  metric: train/return_mean\n  space:\n    agent.lr: "{expr}"\n')
    with pytest.raises(SpecError, match="sweep.space"):
        load_spec(path)
    assert main(["validate", str(path)]) == 2
    assert not (workdir / "pwned").exists()


def test_code_in_a_string_field_stays_a_string(workdir):
    path = _job(workdir, f'description: "{CODE}"\ncheckpoint: {{path: "{CODE}"}}\n')
    spec = load_spec(path).spec
    assert spec.description == CODE and spec.checkpoint.path == CODE
    assert main(["validate", str(path)]) == 0
    assert not (workdir / "pwned").exists()


def test_code_in_an_override_stays_a_string_or_is_a_type_error(workdir, capsys):
    path = _job(workdir)
    spec = load_spec(path, [f"description={CODE}", f"tracking.experiment={CODE}"]).spec
    assert spec.description == CODE and spec.tracking.experiment == CODE
    with pytest.raises(SpecError, match="agent.lr"):
        load_spec(path, [f"agent.lr={CODE}"])
    with pytest.raises(SpecError, match="name"):  # the name pattern refuses it
        load_spec(path, [f"name={CODE}"])
    assert main(["validate", str(path), "-o", f"agent.gamma={CODE}"]) == 2
    assert "agent.gamma" in capsys.readouterr().err
    assert not (workdir / "pwned").exists()


def test_python_yaml_tags_are_refused_in_the_file_and_plain_text_in_an_override(workdir):
    path = _job(workdir, 'description: !!python/object/apply:os.system ["touch pwned"]\n')
    with pytest.raises(SpecError, match="YAML syntax error"):
        load_spec(path)
    override = "description=!!python/object/apply:os.system ['touch pwned']"
    spec = load_spec(_job(workdir), [override]).spec
    assert spec.description == override.split("=", 1)[1]  # kept as the text it was
    assert not (workdir / "pwned").exists()
