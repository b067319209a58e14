"""No input crashes the spec loader or the override parser: it is a spec or a SpecError."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainyard.loader import SpecError, load_spec, parse_override, validate_data
from trainyard.sweep_space import parse_space_expr

BASE = {"name": "fuzz", "kind": "supervised"}
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
yaml_ish = st.text(alphabet=st.sampled_from(list("abkind:name-_ {}[],'\"\n\t#&*!|>0123.e")),
                   max_size=120)


@FUZZ
@given(text=st.one_of(yaml_ish, st.text(max_size=200)))
def test_any_file_text_is_a_spec_or_a_spec_error(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_spec(path)
    except SpecError as err:
        assert str(err).startswith("job spec ")


@FUZZ
@given(override=st.text(max_size=60))
def test_any_override_is_applied_or_refused_clearly(override):
    try:
        parse_override(override)
    except ValueError as err:
        assert "KEY.PATH=VALUE" in str(err)
    try:
        validate_data(dict(BASE), "fuzz.yaml", [override])
    except SpecError as err:
        assert err.problems


@FUZZ
@given(expr=st.text(max_size=40))
def test_any_space_expression_parses_or_says_why(expr):
    try:
        parse_space_expr(expr)
    except ValueError as err:
        assert str(err)
