"""``plot_virtual_token_counts`` (notebook 06's widget): the counts it draws are those of the wrapped models and
equal the equations (prompt P d, prefix P 2 L d, projection P d + d h + h + h 2Ld + 2Ld, LoRA on query and value
2 L r 2d), and the model it is given is left as it was."""
import matplotlib

matplotlib.use("Agg")

from ftlab.viz import plot_virtual_token_counts
from ftlab.zoo import load_bert


def test_counts_drawn_equal_the_equations_and_leave_the_model_untouched(untouched):
    base, _ = load_bert()
    check = untouched(base)
    P, L, d, h, r = 3, 6, 384, 16, 2
    fig = plot_virtual_token_counts(base, num_virtual_tokens=P, encoder_hidden_size=h, r=r)
    (ax,) = fig.axes
    drawn = {tick.get_text(): bar.get_width() for tick, bar in zip(ax.get_yticklabels(), ax.patches)}
    assert drawn == {"prompt": P * d, "prefix": P * 2 * L * d,
                     "prefix + projection\n(while training)": P * d + d * h + h + h * 2 * L * d + 2 * L * d,
                     f"LoRA r={r}": L * 2 * r * 2 * d}
    assert ax.get_xscale() == "log" and f"P = {P}" in ax.get_title()
    check()


def test_projection_width_defaults_to_the_model_width():
    base, _ = load_bert()
    P, L, d = 1, 6, 384
    fig = plot_virtual_token_counts(base, num_virtual_tokens=P)
    ax = fig.axes[0]
    drawn = {tick.get_text(): bar.get_width() for tick, bar in zip(ax.get_yticklabels(), ax.patches)}
    assert drawn["prefix + projection\n(while training)"] == P * d + d * d + d + d * 2 * L * d + 2 * L * d
