"""The chat page in a real headless Chromium: type, watch the answer stream in, move sliders, send again, clear;
and the same page 400 px wide (a phone): a wide enough input, every button on screen, the settings behind a button.

Needs Debian's `chromium` (apt-get install -y chromium) and the `playwright` package (dev extra), which drives the
system browser through `executable_path`; without them the test is skipped with that message.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from llm_core.inference.loading import load
from llm_core.inference.server import create_app
from tests.serving import request, running

INSTALL = ("needs a Chromium and Playwright: `apt-get install -y chromium` and `pip install -e '.[dev]'` "
           "(installs playwright; no browser download needed)")
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason=INSTALL)
    if CHROMIUM is None:
        pytest.skip(INSTALL)
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _settle(page):
    """Wait until the answer in progress has finished streaming."""
    page.wait_for_selector("#send:not([disabled])")
    page.wait_for_function("!document.querySelector('.streaming')")


def test_page_streams_answers_and_sends_slider_values(browser, served_models):
    loaded = load(served_models / "sft", device="cpu")
    app = create_app(loaded, max_batch=4)
    engine = app.state.scheduler.engine
    step = engine.step

    def slow_step():  # a model that takes 5 ms a token, so the answer visibly arrives in several pieces
        time.sleep(0.005)
        return step()

    engine.step = slow_step
    with running(app) as base:
        # what the page should show: the greedy answer with the page's default penalty and length
        expected = request(base, "POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Tell me a story."}], "temperature": 0,
            "repetition_penalty": 1.1, "max_tokens": 256})[1]["choices"][0]["message"]["content"]
        assert expected.strip(), "the test model must say something"
        page = browser.new_page()
        bodies, streams = [], []
        page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.method == "POST" else None)
        page.on("requestfinished", lambda r: streams.append(r.response().text()) if r.method == "POST" else None)
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('status').textContent === 'model: sft'")
        page.focus("#temperature")
        page.keyboard.press("Home")  # the slider to its minimum: greedy
        assert page.text_content("#temperature-value") == "0"
        # count the DOM updates of the answer: a streamed one arrives in several pieces
        page.evaluate("""() => { window.updates = 0;
            new MutationObserver(() => window.updates++).observe(document.getElementById('messages'),
                {childList: true, subtree: true, characterData: true}); }""")
        page.fill("#input", "Tell me a story.")
        page.press("#input", "Enter")
        _settle(page)
        answers = page.locator(".msg.assistant")
        assert answers.count() == 1 and answers.nth(0).text_content() == expected
        assert page.evaluate("window.updates") >= 3  # the bubbles, then the answer growing piece by piece
        assert bodies[-1]["temperature"] == 0 and bodies[-1]["stream"] is True
        assert streams[-1].count("data: ") >= 4 and streams[-1].rstrip().endswith("data: [DONE]")

        assert not page.locator("#settings-toggle").is_visible()  # wide enough for the settings beside the chat
        assert page.get_attribute("#max_tokens", "max") == "4096"  # as far as the API goes
        page.fill("#max_tokens", "3")  # move a slider, then send again: markup in a message stays text
        assert page.text_content("#max_tokens-value") == "3"
        page.fill("#input", "<img src=x onerror=\"window.hacked=1\"> and then?")
        page.click("#send")
        _settle(page)
        assert bodies[-1]["max_tokens"] == 3 and len(bodies[-1]["messages"]) == 3
        assert [m["role"] for m in bodies[-1]["messages"]] == ["user", "assistant", "user"]
        assert answers.count() == 2 and page.locator("#messages img").count() == 0
        assert page.evaluate("window.hacked === undefined")

        page.click("#clear")
        assert page.locator(".msg").count() == 0
        page.close()


def test_page_is_usable_400_px_wide(browser, served_models):
    """A phone-sized window: the input keeps at least 200 px, every button is on screen, the settings open behind
    a button, and a message gets its answer."""
    with running(create_app(load(served_models / "sft", device="cpu"), max_batch=2)) as base:
        page = browser.new_page(viewport={"width": 400, "height": 780})
        page.goto(base + "/")
        page.wait_for_function("document.getElementById('status').textContent === 'model: sft'")
        assert page.evaluate("document.documentElement.scrollWidth") <= 400  # nothing sticks out sideways
        assert page.locator("#input").bounding_box()["width"] >= 200
        for button in ("#send", "#stop", "#clear", "#settings-toggle"):
            box = page.locator(button).bounding_box()
            assert page.locator(button).is_visible() and box is not None, button
            assert box["x"] >= 0 and box["x"] + box["width"] <= 400 and box["y"] + box["height"] <= 780, (button, box)
            assert box["width"] >= 40 and box["height"] >= 24, (button, box)  # big enough to hit
        assert not page.locator("#max_tokens").is_visible()  # folded away until asked for
        page.click("#settings-toggle")
        assert page.locator("#max_tokens").is_visible()
        assert page.get_attribute("#max_tokens", "max") == "4096"
        page.fill("#max_tokens", "4")
        page.click("#settings-toggle")
        page.fill("#input", "Tell me a story about a cat. " * 30)  # past the test model's 128-token context
        page.click("#send")
        _settle(page)
        assert page.locator(".msg.assistant").count() == 1 and page.locator(".msg.error").count() == 0
        note = page.locator(".msg.note").text_content()  # the page says what the model could not read
        assert "more than the model's context of 128" in note and "tokens were dropped" in note
        assert page.locator("#send").bounding_box()["y"] + page.locator("#send").bounding_box()["height"] <= 780
        page.close()
