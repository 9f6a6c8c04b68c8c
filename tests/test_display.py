"""Display helpers: HTML with a text twin, widgets with a static fallback, a progress bar that cleans up."""

import ipywidgets as widgets

from workshop_utils.display import STATIC_CLASS, Rendered, WithFallback, bars, progress, table


def test_table_has_html_and_aligned_text():
    shown = table(["token", "id"], [["<b>", 1], ["Ġworld", 1917]])
    assert "&lt;b&gt;" in shown._repr_html_(), "cells are escaped"
    lines = repr(shown).splitlines()
    assert lines[0].split() == ["token", "id"] and lines[3].split() == ["Ġworld", "1917"]
    assert len({line.index("1") for line in lines[2:]}) == 1, "the id column is aligned"


def test_bars_scale_to_the_largest_value_and_mute():
    chart = bars(["a", "b"], [0.5, 0.25], muted=[False, True])
    assert "width:300.0px" in chart.html and "width:150.0px" in chart.html
    assert "#bbbbbb" in chart.html
    a, b = repr(chart).splitlines()
    assert a.split()[1] == "#" * 30 and b.split()[1] == "." * 15


def test_with_fallback_carries_widget_and_snapshot():
    slider = widgets.IntSlider(value=3)
    bundle = WithFallback(slider, Rendered("<p>3</p>", "value 3"))._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == slider.model_id
    assert bundle["text/html"] == f"<div class='{STATIC_CLASS}'><p>3</p></div>"
    assert bundle["text/plain"] == "value 3"


def test_progress_outside_a_notebook_yields_everything():
    assert list(progress(range(5), "count")) == [0, 1, 2, 3, 4]
    assert list(progress(iter("abc"), "letters")) == ["a", "b", "c"]
