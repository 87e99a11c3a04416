"""Tests of the built-in data world: determinism, consistent facts, exact entropy, chat and HellaSwag contracts."""

from __future__ import annotations

import itertools
import lzma
import math
import random
import re
from collections import Counter

import pytest

from llm_core.data import synthetic as syn
from llm_core.data import synthetic_chat as chat

_C, _O, _A, _P = ("|".join(words) for words in (syn.COLORS, syn.OBJECTS, syn.ANIMALS, syn.PLACES))
_HELLASWAG_KEYS = {"ind": int, "activity_label": str, "ctx_a": str, "ctx_b": str, "ctx": str, "endings": list,
                   "label": int, "split": str, "split_type": str, "source_id": str}


def _facts(story: str) -> dict:
    """Read the facts back out of a story with plain regexes (independent of the generator's templates) and fail if
    any of them is stated two different ways."""
    opening = story.split(". ")[0]
    hero = re.search(r" named (\w+)", opening) or re.match(r"(\w+) was ", opening)
    assert hero, story
    facts = {"hero": hero[1]}
    pairs = set(re.findall(rf"\b({_C}) ({_O})\b", story))
    pets = set(re.findall(rf"\b({_A}) (?:named|called) (\w+)\b", story))
    pets |= {(a, p) for p, a in re.findall(rf"\b([A-Z]\w+) the ({_A})\b", story)}
    places = set(re.findall(rf"\bthe (\w+) ({_P})\b", story))  # (epithet, place)
    friends = set(re.findall(r"\bfriend ([A-Z]\w+)", story))
    assert len(pairs) == 1 and len(pets) == 1 and len(places) <= 1 and len(friends) <= 1, story
    (facts["color"], facts["object"]), = pairs
    (facts["animal"], facts["pet"]), = pets
    facts["epithet"], facts["place"] = next(iter(places), (None, None))
    assert facts["place"] is None or syn.EPITHETS[facts["place"]] == facts["epithet"], story
    assert len(re.findall(rf"\b({_P})\b", story)) == len(re.findall(rf"\bthe \w+ ({_P})\b", story)), story
    facts["friend"] = next(iter(friends), None)
    assert facts["pet"] in syn.PET_NAMES and facts["hero"] in syn.NAMES and facts["friend"] != facts["hero"]
    return facts


@pytest.fixture(scope="module")
def stories() -> list[syn._Story]:
    rng = random.Random(123)
    return [syn._sample_story(rng) for _ in range(8000)]


def test_deterministic_per_seed() -> None:
    assert syn.generate_stories(7, 50) == syn.generate_stories(7, 50)
    assert syn.generate_stories(7, 50)[0] != syn.generate_stories(8, 50)[0]
    assert chat.generate_chats(7, 30) == chat.generate_chats(7, 30)
    assert chat.generate_chats(7, 30) != chat.generate_chats(8, 30)
    assert syn.generate_hellaswag(7, 30) == syn.generate_hellaswag(7, 30)
    assert syn.generate_hellaswag(7, 30) != syn.generate_hellaswag(8, 30)


def test_global_random_state_untouched() -> None:
    random.seed(0)
    expected = random.random()
    random.seed(0)
    syn.generate_stories(1, 20), chat.generate_chats(1, 20), syn.generate_hellaswag(1, 20)
    assert random.random() == expected


def test_stories_are_simple_consistent_text() -> None:
    texts, _ = syn.generate_stories(0, 500)
    lengths = [len(t.split()) for t in texts]
    repeats = Counter()
    assert 55 <= min(lengths) and max(lengths) <= 160 and 80 <= sum(lengths) / len(lengths) <= 120
    for text in texts:
        assert text.isascii() and "\n" not in text and text == text.strip()
        facts = _facts(text)
        gender = 0 if facts["hero"] in syn.GIRL_NAMES else 1
        wrong = (r"\b(He|he|his|His|him|boy)\b", r"\b(She|she|her|Her|girl)\b")[gender]
        assert not re.search(wrong, text), text
        repeats["hero"] += text.count(facts["hero"]) >= 3
        repeats["pet"] += text.count(facts["pet"]) >= 3
        repeats["color"] += text.count(f"{facts['color']} {facts['object']}") >= 3
    # Facts are repeated, which is what makes them predictable from context.
    assert min(repeats.values()) >= 0.8 * len(texts), repeats


def test_bad_counts_rejected() -> None:
    with pytest.raises(ValueError, match="num_docs"):
        syn.generate_stories(0, 0)
    with pytest.raises(ValueError, match="num_items"):
        syn.generate_hellaswag(0, -1)


# --------------------------------------------------------------------------------------------- entropy

def test_entropy_plausible() -> None:
    texts, bits_per_byte = syn.generate_stories(0, 2000)
    # A templated world: well below English (~1 bit/byte) but far from zero.
    assert 0.1 < bits_per_byte < 1.0
    # A compressor cannot beat the true entropy of its input; lzma on the whole sample must spend more.
    data = "\n".join(texts).encode()
    lzma_bits = 8 * len(lzma.compress(data, preset=9)) / (len(data) - len(texts) + 1)
    assert lzma_bits > bits_per_byte * 1.5


def test_no_two_templates_can_render_alike() -> None:
    # Conservative check of injectivity: two templates that compete at one choice point must differ at some token
    # position where their possible words are disjoint (a shorter one may not match the other's prefix either).
    def words(is_slot: bool, name: str) -> set[str]:
        if not is_slot:
            return {name}
        if name == "a":
            return {"a", "an"}
        if name == "pl":
            return set(syn.EPITHETS.values())
        return set(syn._PRONOUNS.get(name) or syn._FREE.get(name) or syn._ENTITIES[name])

    for group in syn.CHOICE_POINTS:
        for t1, t2 in itertools.combinations(group, 2):
            assert any(not words(*x) & words(*y) for x, y in zip(t1.tokens, t2.tokens)), (t1, t2)
    for options in (*syn._ENTITIES.values(), *syn._FREE.values()):
        assert len(set(options)) == len(options) and all(re.fullmatch(r"[A-Za-z]+", w) for w in options)
    # Filler words never look like facts (HellaSwag wrong endings rely on entity words meaning one thing).
    assert not set().union(*syn._ENTITIES.values()) & set().union(*syn._FREE.values())
    # A place's epithet names it and nothing else.
    epithets = set(syn.EPITHETS.values())
    assert len(epithets) == len(syn.PLACES) and set(syn.EPITHETS) == set(syn.PLACES)
    assert not epithets & set().union(*syn._ENTITIES.values(), *syn._FREE.values())


def test_bits_recovered_from_text_alone(stories: list[syn._Story]) -> None:
    # The parser sees only the text; one parse per step and the same bits mean the text determines the choices.
    for story in stories[:400]:
        assert syn._parse_story(story.text) == pytest.approx(story.step_bits, abs=1e-9)
    with pytest.raises(ValueError):
        syn._parse_story(stories[0].text.replace(".", "!", 1))
    with pytest.raises(ValueError):
        syn._parse_story(stories[0].text + " The end.")


def test_bits_match_empirical_frequencies(stories: list[syn._Story]) -> None:
    # Monte-Carlo: the plug-in entropy of the opening sentences (960 outcomes, Miller-Madow corrected) must equal
    # the mean of the -log2 p the generator charged for them.
    counts = Counter(story.sentences[0] for story in stories)
    n = len(stories)
    plugin = -sum(c / n * math.log2(c / n) for c in counts.values()) + (len(counts) - 1) / (2 * n * math.log(2))
    charged = sum(story.step_bits[0] for story in stories) / n
    assert plugin == pytest.approx(charged, abs=0.05)
    # Same for the number of body sentences, which carries the end-of-document information.
    lengths = Counter(len(story.sentences) for story in stories)
    plugin = -sum(c / n * math.log2(c / n) for c in lengths.values())
    assert plugin == pytest.approx(stories[0].step_bits[-1], abs=0.01)


def test_identical_text_identical_bits(stories: list[syn._Story]) -> None:
    for position in (0, -1):
        seen: dict[str, float] = {}
        for story in stories:
            sentence, bits = story.sentences[position], story.step_bits[position - (position < 0)]
            assert seen.setdefault(sentence, bits) == pytest.approx(bits), sentence
    totals: dict[str, float] = {}
    for story in stories:
        assert totals.setdefault(story.text, sum(story.step_bits)) == pytest.approx(sum(story.step_bits))


# --------------------------------------------------------------------------------------------- chats

def _check_answer(question: str, answer: str, facts: dict) -> None:
    a_color = "an" if facts["color"][0] in "aeiou" else "a"
    a_animal = "an" if facts["animal"][0] in "aeiou" else "a"
    expected = {
        r"What color was (\w+)'s (\w+)\?": f"{facts['hero']}'s {facts['object']} was {facts['color']}.",
        r"What (\w+) thing did (\w+) have\?": f"{facts['hero']} had {a_color} {facts['color']} {facts['object']}.",
        r"What was the name of (\w+)'s (\w+)\?": f"The {facts['animal']} was named {facts['pet']}.",
        r"What kind of animal was (\w+)\?": f"{facts['pet']} was {a_animal} {facts['animal']}.",
        r"Where did (\w+) go\?": f"{facts['hero']} went to the {facts['epithet']} {facts['place']}.",
        r"Who did (\w+) meet\?": f"{facts['hero']} met {'his' if facts['hero'] in syn.BOY_NAMES else 'her'} friend "
                                  f"{facts['friend']}.",
        r"What was the name of the (girl|boy) in the story\?": "The {} in the story was named " + facts["hero"] + ".",
    }
    for pattern, answer_text in expected.items():
        if m := re.search(pattern, question):
            assert answer == answer_text.format(m.group(1)), (question, answer, facts)
            assert "None" not in answer
            return
    raise AssertionError(f"unknown question {question!r}")


def test_chats_schema_and_correct_answers() -> None:
    convs = chat.generate_chats(5, 400)
    kinds = Counter()
    for messages in convs:
        roles = [m["role"] for m in messages]
        if roles[0] == "system":
            roles = roles[1:]
        assert roles and roles == ["user", "assistant"] * (len(roles) // 2) and len(roles) <= 8
        assert all(set(m) == {"role", "content"} and m["content"].strip() and m["content"].isascii() for m in messages)
        turns = [m["content"] for m in messages if m["role"] != "system"]
        first = turns[0]
        if "\n\n" in first:  # a story followed by questions about it
            story = max(first.split("\n\n"), key=len).removeprefix("Story: ")
            facts = _facts(story)
            for question, answer in zip(turns[::2], turns[1::2]):
                _check_answer(question.split("\n\n")[-1], answer, facts)
            if facts["friend"]:  # the rarest fact is always asked about
                assert any("meet?" in question for question in turns[::2]), turns
            kinds["qa"] += 1
        elif first.startswith("My "):  # facts stated, then asked back in this or a later turn
            pets, owned = {}, {}
            for question, answer in zip(turns[::2], turns[1::2]):
                for animal, name in re.findall(r"[Mm]y (\w+) is called (\w+)", question):
                    assert animal not in pets and name not in pets.values()  # every fact of a chat is new
                    pets[animal] = name
                for obj, color in re.findall(rf"[Mm]y ({_O}) is ({_C})\b", question):
                    assert obj not in owned and color not in owned.values()
                    owned[obj] = color
                if m := re.search(r"What is my (\w+) called\?$", question):
                    assert answer == f"Your {m[1]} is called {pets[m[1]]}."
                else:
                    obj = re.search(r"What color is my (\w+)\?$", question)[1]
                    assert answer == f"Your {obj} is {owned[obj]}."
            kinds["facts"] += 1
            kinds["facts_multi_turn"] += len(turns) > 2
        else:  # a story request: the story must honour what was asked for
            facts = _facts(turns[1])
            if m := re.search(rf"about an? ({_A})\b", first):
                assert facts["animal"] == m[1]
            elif m := re.search(r"named (\w+)", first):
                assert facts["hero"] == m[1]
            elif m := re.search(rf"about an? ({_C}) ({_O})\b", first):
                assert (facts["color"], facts["object"]) == (m[1], m[2])
            kinds["story"] += 1
    assert min(kinds.values()) >= 10 and len(kinds) == 4


# ----------------------------------------------------------------------------------------- hellaswag

def test_hellaswag_schema() -> None:
    items = syn.generate_hellaswag(0, 400)
    assert [item["ind"] for item in items] == list(range(400))
    for item in items:
        assert set(item) == set(_HELLASWAG_KEYS)
        assert all(isinstance(item[k], t) for k, t in _HELLASWAG_KEYS.items())
        assert item["ctx"] == (f"{item['ctx_a']} {item['ctx_b']}" if item["ctx_b"] else item["ctx_a"])
        assert len(item["endings"]) == 4 and all(isinstance(e, str) and e.strip() for e in item["endings"])
        assert len(set(item["endings"])) == 4 and 0 <= item["label"] <= 3
        assert (item["split"], item["split_type"]) == ("val", "indomain")
        assert item["ctx"].isascii() and all(e.isascii() for e in item["endings"])
    labels = Counter(item["label"] for item in items)
    assert all(60 <= labels[k] <= 140 for k in range(4))
    kinds = Counter(item["activity_label"] for item in items)
    assert len(kinds) == 7 and max(kinds.values()) - min(kinds.values()) <= 1, kinds  # every kind of fact alike


def test_hellaswag_wrong_endings_contradict_context() -> None:
    for item in syn.generate_hellaswag(1, 400):
        ctx_words = re.findall(r"\w+", item["ctx"])
        right = re.findall(r"\w+|\S", item["endings"][item["label"]])
        for k, ending in enumerate(item["endings"]):
            if k == item["label"]:
                continue
            wrong = re.findall(r"\w+|\S", ending)
            # Only the fact differs (and a/an in front of it, if any).
            diff = [(r, w) for r, w in zip(right, wrong) if r != w and r not in ("a", "an")]
            assert len(wrong) == len(right) and diff, item
            for r, w in diff:
                # The right word is a fact stated recently in ctx; the wrong one is nowhere in ctx.
                assert r in ctx_words[-100:] and w not in ctx_words, (r, w, item)


def test_hellaswag_place_items_cut_before_the_epithet() -> None:
    # The epithet names its place: ctx must stop before it, so that choosing the ending means copying from ctx.
    items = [i for i in syn.generate_hellaswag(2, 400) if i["activity_label"] == "Story: place"]
    assert len(items) >= 20
    for item in items:
        assert not item["ctx"].endswith(tuple(syn.EPITHETS.values())), item["ctx"]
        for ending in item["endings"]:
            epithet, place = re.match(r"(\w+) (\w+)", ending).groups()
            assert syn.EPITHETS[place] == epithet, item


def test_hellaswag_items_are_not_training_documents() -> None:
    train, _ = syn.generate_stories(0, 2000)
    items = syn.generate_hellaswag(0, 200)
    assert not any(text.startswith(item["ctx_a"]) for item in items for text in train)


def test_unigram_baseline_near_chance() -> None:
    train, _ = syn.generate_stories(0, 2000)
    acc, acc_norm = syn.unigram_accuracy(train, syn.generate_hellaswag(0, 400))
    assert 0.15 <= acc <= 0.40 and 0.15 <= acc_norm <= 0.40


# ----------------------------------------------------------------------------------------- notes

def _parse_note(text: str) -> float:
    """Recompute a note's bits from its text alone (an independent reading of `_note_units`' rules), checking that
    every thing is new and every answer is the value told for that thing."""
    sentences = re.findall(r"[^.?]+[.?]", text)
    told: dict[str, str] = {}
    used = {"pet": set(), "animal": set(), "color": set(), "object": set()}
    pools = {"pet": syn.PET_NAMES, "animal": syn.ANIMALS, "color": syn.COLORS, "object": syn.OBJECTS}
    bits, units, i = math.log2(6), 0, 0

    def new(kind: str, value: str) -> float:
        assert value in pools[kind] and value not in used[kind], (value, text)
        used[kind].add(value)
        return math.log2(len(pools[kind]) - len(used[kind]) + 1)

    while i < len(sentences):
        s = sentences[i].strip()
        units += 1
        if 0 < len(told) < 6:
            bits += 1  # statement or question
        if m := re.fullmatch(r"What (?:is my (\w+) called|color is my (\w+))\?", s):
            thing = m[1] or m[2]
            answer = sentences[i + 1].strip()
            assert answer == (f"My {thing} is called {told[thing]}." if m[1] else f"My {thing} is {told[thing]}.")
            bits += math.log2(len(told))
            i += 2
            continue
        pets = re.findall(r"[Mm]y (\w+) is called (\w+)", s)
        toys = re.findall(rf"[Mm]y ({_O}) is ({_C})\b", s)
        facts = pets or toys
        assert len(facts) in (1, 2) and s.startswith("My "), s
        bits += 1 + (len(told) < 5)  # kind, and one or two things unless only one more fits
        for thing, value in facts:
            bits += new("animal" if pets else "object", thing) + new("pet" if pets else "color", value)
            told[thing] = value
        i += 1
    assert 3 <= units <= 8 and len(told) <= 6
    return bits


def test_notes_bind_every_value_to_its_thing_and_their_bits_are_exact() -> None:
    rng = random.Random(5)
    kinds = Counter()
    for _ in range(600):
        units, bits = syn._note_units(rng)
        text = " ".join(units)
        assert _parse_note(text) == pytest.approx(bits, abs=1e-9), text
        kinds["two of a kind"] += " and " in text
        kinds["question"] += "?" in text
    assert min(kinds.values()) > 200, kinds


def test_corpus_mixes_stories_and_notes() -> None:
    assert not any(t.startswith(("My ", "What ")) for t in syn.generate_corpus(3, 300)[0])  # notes are off by default
    texts, bpb = syn.generate_corpus(3, 300, notes_every=4)
    notes = [t for t in texts if t.startswith(("My ", "What "))]
    assert len(notes) == 75 and texts[3] in notes and texts[0] not in notes
    assert syn.generate_corpus(3, 300, 4) == (texts, bpb) and syn.generate_corpus(4, 300, 4)[0] != texts
    stories_only = syn.generate_stories(3, 200)[1]
    assert 0.1 < bpb < 1.0 and bpb != stories_only
