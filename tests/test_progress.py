"""Progress bars: shown in terminals and notebooks, absent from logs (no carriage-return lines in CI output)."""

import io

from tqdm import tqdm

from kgl._logging import no_bar


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _drawn(stream, show: bool) -> str:
    for _ in tqdm(range(50), file=stream, disable=no_bar(show), mininterval=0):
        pass
    return stream.getvalue()


def test_bars_draw_on_terminals_only():
    assert "\r" in _drawn(_Tty(), True)
    assert _drawn(io.StringIO(), True) == ""  # a log file: no bar at all
    assert _drawn(_Tty(), False) == ""  # show_progress=False / --quiet


def test_classify_spots_writes_no_bar_into_a_log(capsys):
    # stderr captured (not a terminal), show_progress=True: nothing drawn, as in `kgl demo > log`
    import kgl
    from _kgl_fixtures import make_visium, red_fraction_segmenter

    adata = make_visium(width=600, height=500, mpp=0.5)
    kgl.tl.classify_spots(adata, red_fraction_segmenter(), show_progress=True, precision="fp32")
    assert "glomerulus_fraction" in adata.obs
    assert "\r" not in capsys.readouterr().err
