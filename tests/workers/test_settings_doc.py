"""workers.settings_doc: docs/configuration.md shows every setting as workers/settings.py declares it."""

from __future__ import annotations

from workers import settings_doc
from workers.settings import Settings


def test_committed_configuration_page_equals_what_the_settings_render() -> None:
    text = settings_doc.PAGE.read_text()
    assert settings_doc.render_page(text) == text, "run python -m workers.settings_doc"


def test_every_setting_is_listed_with_its_default_and_description() -> None:
    out = settings_doc.render()
    assert "| `MINDSTREAM_REFRESH__INTERVAL_S` | float | `30.0` | Refresh at least this often" in out
    assert "| `MINDSTREAM_KAFKA__CLICKS_TOPIC` | str | `clicks` |" in out
    assert "| `MINDSTREAM_REFRESH__COLD_START_STEPS__STEPS` | int | `10` |" in out  # a section inside a section
    assert "| `MINDSTREAM_HTTP__ADMIN_TOKEN` | SecretStr or unset | unset |" in out
    for section, field in Settings.model_fields.items():
        assert f"`MINDSTREAM_{section.upper()}" in out, field


def test_no_path_of_this_machine_is_written() -> None:
    assert str(settings_doc.ROOT) not in settings_doc.render()
