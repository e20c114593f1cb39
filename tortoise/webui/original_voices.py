"""The web UI's "Get the original voices" button: the same fetch as ``tortoise-voices fetch``, reported on the page.

The logic (what the button says, what one press does) is plain functions testable without Streamlit; ``section()``
draws it. After a successful fetch the page reruns and the voices appear in the voice list, which searches the
fetched originals after the user's directories (``tortoise.utils.voices``).
"""

from __future__ import annotations

from tortoise.utils.original_voices import FetchError, describe_size, fetch, is_fetched, originals_dir, release

BUTTON_KEY = "fetch_original_voices"
CONSENT = "Clone only voices you have permission to use."


def button_label() -> str:
    rel = release()
    return f"Get the original voices ({len(rel.voices)} voices, {describe_size(rel.size)} download)"


def offer_caption(cache_dir=None) -> str:
    examples = ", ".join(n for n in ("tom", "emma", "freeman") if n in release().voices)
    return (f"The voices of the original Tortoise ({examples}, "
            f"the train_* voices, ...) are not part of this package. The button downloads the original's package "
            f"(tortoise-tts {release().version}) through pip from your package index, checks it and keeps only its "
            f"voices, in {originals_dir(cache_dir)}. {CONSENT}")


def needs_offer(cache_dir=None) -> bool:
    return not is_fetched(cache_dir)


def fetch_for_page(cache_dir=None, progress=None) -> tuple[bool, str]:
    """Fetch the original voices; (True, what was done) or (False, the one-line error with its fix)."""
    try:
        result = fetch(cache_dir=cache_dir, quiet=True, progress=progress)
    except FetchError as e:
        return False, f"Could not get the original voices: {e}"
    except OSError as e:
        return False, f"Could not get the original voices: {e.strerror or e}."
    if result.already:
        return True, f"The original voices are already in {result.directory}."
    return True, (f"Fetched {result.voices} original Tortoise voices ({describe_size(result.bytes)}) into "
                  f"{result.directory}; they are in the voice list now. {CONSENT}")


def section(cache_dir=None) -> None:
    """Draw the offer when the original voices are not there; on a press fetch them and rerun the page."""
    import streamlit as st
    if not needs_offer(cache_dir):
        return
    st.caption(offer_caption(cache_dir))
    if not st.button(button_label(), key=BUTTON_KEY):
        return
    with st.spinner("Downloading the original voices with pip..."):
        bar = st.progress(0.0, text="Downloading")
        ok, message = fetch_for_page(cache_dir, progress=lambda done, total: bar.progress(
            done / max(total, 1), text=f"Extracting {done}/{total} files"))
    if not ok:
        st.error(message)
        return
    st.session_state["_flash"] = message
    st.rerun()
