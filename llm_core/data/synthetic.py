"""The built-in data world: short stories, chats about them, and HellaSwag-format items.

Everything is drawn from a seed with private `random.Random` instances, so the default pipeline is offline and
reproducible. A story introduces a hero, a colored object, a named pet and (sometimes) a place and a friend, then keeps
referring back to them; predicting those later mentions needs the context, which is what the HellaSwag-format items
test. The story generator knows the probability of each choice it makes and so reports the true entropy of its text.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter

GIRL_NAMES = ("Lily", "Mia", "Anna", "Sara", "Emma", "Lucy", "Ella", "Zoe", "Amy", "Rosa", "Kate", "Nina", "Ruby",
              "Jane", "Ivy")
BOY_NAMES = ("Tom", "Ben", "Sam", "Leo", "Jack", "Tim", "Dan", "Joe", "Finn", "Noah", "Eli", "Jake", "Luke", "Owen",
             "Adam")
NAMES = GIRL_NAMES + BOY_NAMES
# Friends have names of their own. With the heroes' names a friend's name was "a name, not the hero's", and since the
# first mention of a friend is always a new name, the tiny model learned to predict an unseen name after "friend"
# (0.16 on HellaSwag friend items); a name of its own kind is copied like a pet's name.
FRIEND_NAMES = ("Olive", "Hugo", "Iris", "Felix", "Clara", "Nora", "Theo", "Maya", "Arlo", "Lena", "Gus", "Hazel",
                "Ned", "Flora", "Otto")
PET_NAMES = ("Max", "Buddy", "Spot", "Fluffy", "Coco", "Bella", "Rex", "Milo", "Daisy", "Pip", "Toby", "Oscar", "Rocky",
             "Luna", "Peanut", "Bubbles", "Ziggy", "Bingo", "Muffin", "Shadow")
COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black", "brown")
OBJECTS = ("ball", "kite", "hat", "car", "boat", "doll", "drum", "bike", "book", "cup", "train", "balloon", "scarf",
           "bucket", "umbrella")
ANIMALS = ("dog", "cat", "bunny", "bird", "fish", "frog", "duck", "hamster", "turtle", "pony", "mouse", "owl", "lamb",
           "goat", "parrot")
PLACES = ("park", "beach", "forest", "garden", "farm", "lake", "zoo", "market", "hill", "river")
# Each place has its own word, said before it every time ("the sandy beach"). It is derived from the place, so it costs
# no bits. Without it the tiny default model never learned to copy the place from the context, though its attention
# found the earlier mention: nothing but copying told one place from another (the other entities have a/an in front,
# a pronoun that follows or a word they always precede), so the model predicted all ten alike and their tied
# embeddings collapsed onto one direction (mean cosine 0.96 between places, 0.33 between pet species), leaving the
# copied value nothing to say. The epithet predicts its place, which keeps the ten apart. bench/RESULTS.md has the runs.
EPITHETS = dict(zip(PLACES, ("grassy", "sandy", "dark", "quiet", "muddy", "deep", "busy", "noisy", "steep", "wide")))
# Words that fill one-off slots. They are kept disjoint from the entity lists above so that an entity word in a story
# is always a fact about that story, never filler.
KINDS = ("little", "kind", "happy", "curious", "brave", "shy", "smart", "sweet")
ADJECTIVES = ("big", "small", "tall", "old", "shiny", "soft", "funny", "tiny", "round", "pretty", "strange", "wet")
THINGS = ("tree", "flower", "rock", "stick", "leaf", "shell", "bug", "cloud", "nest", "bench", "puddle", "butterfly",
          "bush", "snail", "feather", "log")
FOODS = ("cake", "cookies", "apples", "bread", "soup", "pie", "grapes", "sandwiches")
WEATHERS = ("sunny", "windy", "warm", "cold", "cloudy", "bright")
FEELINGS = ("happy", "glad", "proud", "excited", "sleepy", "calm")
TIMES = ("Then", "Later", "Soon", "Next", "Suddenly", "Afterwards")
HOLD_VERBS = ("held", "carried", "hugged", "cleaned", "washed", "hid")
MOVES = ("ran", "jumped", "hopped", "danced", "rolled", "raced")
DAYPARTS = ("morning", "afternoon", "day", "evening")

# Entities are drawn once per story, on first mention, and repeated verbatim afterwards.
_ENTITIES = {"Name": NAMES, "color": COLORS, "object": OBJECTS, "animal": ANIMALS, "pet": PET_NAMES, "place": PLACES,
             "friend": FRIEND_NAMES}
_FREE = {"kind": KINDS, "adj": ADJECTIVES, "thing": THINGS, "food": FOODS, "weather": WEATHERS, "feel": FEELINGS,
         "time": TIMES, "hold": HOLD_VERBS, "move": MOVES, "daypart": DAYPARTS}
_FREE_SETS = {k: frozenset(v) for k, v in _FREE.items()}
_GENDER = {**{n: 0 for n in GIRL_NAMES}, **{n: 1 for n in BOY_NAMES}}
_PRONOUNS = {"He": ("She", "He"), "he": ("she", "he"), "His": ("Her", "His"), "his": ("her", "his"),
             "him": ("her", "him"), "girl": ("girl", "boy")}
_DERIVED = frozenset(_PRONOUNS) | {"a", "pl"}
_SLOT_RE = re.compile(r"\{(\w+)\}")
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")
_WORD_RE = re.compile(r"[a-z]+")
# Body length in sentences, uniform. With the fixed five other sentences this gives ~60-150 words per story.
_K_MIN, _K_MAX = 4, 11
# The only entities a template may require or exclude; candidate lists are cached per combination of them.
_GATES = ("place", "friend")
_LOG2 = (0.0, *(math.log2(n) for n in range(1, 64)))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiouAEIOU" else "a"


def _derived(name: str, next_word: str, hero: str) -> str | None:
    """A derived word (no choice of its own): a/an from the next word, a place's epithet from the place after it, or a
    pronoun from the hero's gender. None where the next word is no place (the parser then rejects the match)."""
    if name == "a":
        return _article(next_word)
    if name == "pl":
        return EPITHETS.get(next_word)
    return _PRONOUNS[name][_GENDER[hero]]


def _entity_options(name: str, state: dict) -> tuple[str, ...]:
    """The values an entity can take when first shown (every entity has a list of its own)."""
    return _ENTITIES[name]


class _Template:
    """One sentence with `{slot}`s: entities (fixed per story), free words (fresh each use) or derived words
    (pronouns from the hero's gender, `{a}` = a/an from the next word, `{pl}` = the epithet of the place after it)."""

    __slots__ = ("text", "pieces", "slots", "derived", "tokens", "needs", "forbids")

    def __init__(self, text: str, needs: tuple[str, ...] = (), forbids: tuple[str, ...] = ()):
        assert set(needs) | set(forbids) <= set(_GATES), text
        self.text, self.needs, self.forbids = text, needs, forbids
        # Even indices are literal text, odd indices slot names: rendering fills the odd ones and joins.
        self.pieces = _SLOT_RE.split(text)
        names = [(i, self.pieces[i]) for i in range(1, len(self.pieces), 2)]
        self.slots = [(i, n) for i, n in names if n not in _DERIVED]
        self.derived = [(i, n) for i, n in names if n in _DERIVED]
        self.tokens: list[tuple[bool, str]] = []  # (is_slot, literal token or slot name), the parser's view
        for i, piece in enumerate(self.pieces):
            if i % 2:
                assert piece in _DERIVED or piece in _FREE or piece in _ENTITIES, piece
                # A slot glued to a word character would merge with it into one token and break parsing.
                assert not self.pieces[i - 1][-1:].isalnum() and not self.pieces[i + 1][:1].isalnum(), text
                if piece in ("a", "pl"):
                    assert self.pieces[i + 1] == " " and i + 2 < len(self.pieces), text
                self.tokens.append((True, piece))
            else:
                self.tokens.extend((False, t) for t in _TOKEN_RE.findall(piece))

    def __repr__(self) -> str:
        return f"_Template({self.text!r})"


_POOLS: dict[tuple, tuple[_Template, ...]] = {}


def _candidates(group: tuple[_Template, ...], state: dict, used: set) -> list[_Template] | tuple[_Template, ...]:
    """The templates of `group` allowed after the story so far: gates satisfied and not used yet."""
    key = (id(group), *(g in state for g in _GATES))
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = tuple(t for t in group if all(n in state for n in t.needs)
                                   and not any(n in state for n in t.forbids))
    return [t for t in pool if t not in used] if used else pool


def _templates(*specs) -> tuple[_Template, ...]:
    return tuple(_Template(s) if isinstance(s, str) else _Template(*s) for s in specs)


OPENINGS = _templates(
    "Once upon a time, there was {a} {kind} {girl} named {Name}.",
    "There was once {a} {kind} {girl} named {Name}.",
    "{Name} was {a} {kind} {girl} who lived in a small house.",
    "One day, {a} {kind} {girl} named {Name} woke up early.",
)
INTRO_OBJECT = _templates(
    "{He} had {a} {color} {object}.",
    "{Name} had {a} {color} {object} that {he} loved very much.",
    "{His} favorite toy was {a} {color} {object}.",
    "Every day, {Name} played with {his} {color} {object}.",
)
INTRO_PET = _templates(
    "{He} had a pet {animal} named {pet}.",
    "{Name} had {a} {animal} called {pet}.",
    "{His} best friend was {a} {animal} named {pet}.",
    "{Name} lived with {a} {animal} named {pet}.",
)
# Most body sentences repeat a fact, so "copy the attribute from the context" is the main skill the corpus teaches.
BODY = _templates(
    "One day, {Name} and {pet} went to the {pl} {place}.",
    "{Name} took {his} {color} {object} to the {pl} {place}.",
    ("At the {pl} {place}, {Name} saw {a} {adj} {thing}.", ("place",)),
    "{pet} the {animal} liked the {color} {object} too.",
    "{Name} threw the {color} {object} and {pet} ran after it.",
    "{He} played with {his} {color} {object} all {daypart}.",
    "{pet} sat next to {Name} and looked at the {adj} {thing}.",
    ("It was {a} {weather} day at the {pl} {place}.", ("place",)),
    # The friend is named after "friend" every time: a rare fact, copied by the same induction as colour -> object.
    # Two ways to meet one and ten sentences that bring one back put a friend in half of the stories, back 1.2 times
    # in those. With one way and eight (a third of the stories, back 0.98 times) friends' names were copied too
    # rarely to be told apart (mean cosine of their embeddings 0.77, pets' 0.34) and HellaSwag friend items scored
    # 0.77 while every other kind scored 1.0 (bench/RESULTS.md).
    ("{Name} met {his} friend {friend}.", (), ("friend",)),
    ('{His} friend {friend} asked, "Can I play with your {color} {object}?"', ("friend",)),
    ("{Name} let {his} friend {friend} play with the {color} {object}.", ("friend",)),
    ("{His} friend {friend} liked {pet} the {animal} very much.", ("friend",)),
    ("{Name}, {his} friend {friend} and {pet} played together at the {pl} {place}.", ("friend", "place")),
    "{time}, {pet} found the {color} {object} under {a} {adj} {thing}.",
    "{Name} gave {pet} a big hug.",
    ("They ate {food} at the {pl} {place}.", ("place",)),
    '{Name} said, "I love my {color} {object}, {pet}!"',
    "{pet} the {animal} was very {feel}.",
    "{He} put the {color} {object} next to {a} {adj} {thing}.",
    ("{Name} showed the {color} {object} to {his} friend {friend}.", ("friend",)),
    ("{Name} and {his} friend {friend} laughed together.", ("friend",)),
    ("{His} friend {friend} ran after {pet} the {animal}.", ("friend",)),
    ("{Name} waved to {his} friend {friend}.", ("friend",)),
    ("{Name} played with {his} friend {friend}.", (), ("friend",)),
    ("{Name} and {his} friend {friend} sang a song.", ("friend",)),
    ("{His} friend {friend} smiled at {pet} the {animal}.", ("friend",)),
    "{time}, {Name} and {pet} ran to the {pl} {place} together.",
    "{time}, {Name} drew a picture of {pet} the {animal}.",
    "{Name} wanted to show {pet} {a} {adj} {thing}.",
    "{time}, the wind blew the {color} {object} up into the sky.",
    "{Name} looked at {his} {color} {object} and smiled.",
    "{pet} the {animal} and {Name} looked for {a} {adj} {thing}.",
    '"Look, {pet}!" said {Name}.',
    "{Name} {hold} {his} {color} {object} very carefully.",
    "{pet} the {animal} {move} around {Name}.",
    "{Name} felt {feel} when {he} saw the {color} {object}.",
    "{Name} shared some {food} with {pet}.",
    ("{Name} and {pet} sat under {a} {adj} {thing} at the {pl} {place}.", ("place",)),
)
CLOSINGS = _templates(
    "At the end of the day, {Name} went home with {pet} and {his} {color} {object}.",
    ("When the sun went down, {Name} and {pet} walked home from the {pl} {place}.", ("place",)),
    "That night, {Name} put {his} {color} {object} next to {his} bed.",
    "In the evening, {pet} the {animal} fell asleep next to {Name}.",
)
ENDINGS = _templates(
    "{He} was very {feel}.",
    "It was the best day ever.",
    '{Name} smiled and said, "I love you, {pet}."',
    "{Name} could not wait to play again tomorrow.",
    "The end.",
)
# Groups of templates that compete at one choice point; tests check that no two in a group can render the same text.
CHOICE_POINTS = (OPENINGS, INTRO_OBJECT + INTRO_PET, BODY + CLOSINGS, ENDINGS)

# Why the reported entropy is exact: a story is produced by the choice sequence (opening template, its slot values,
# which intro comes first, ..., body length k, ...) and log2 of each choice's probability is summed as it is made. The
# sum equals -log2 p(text) only if no two choice sequences render the same text. That holds by construction: at every
# choice point the competing templates differ in a literal word or in a slot whose word lists are disjoint
# (CHOICE_POINTS, checked in the tests); every slot renders one whole word from a list of distinct words; derived words
# (pronouns, a/an, a place's epithet) are functions of choices made in the same sentence or before and cost nothing; an
# entity costs bits only when first shown, and every entity that is drawn is shown (the hero's name is in every opening,
# so gender alone is never revealed); k is visible as the number of body sentences, and body and closing templates are
# disjoint, so the end of a story is determined too. `_parse_story` recovers the choices from the text alone and
# recomputes the same bits.


class _Story:
    __slots__ = ("sentences", "parts", "templates", "step_bits", "state", "bound_at")

    def __init__(self, state: dict):
        self.sentences: list[str] = []
        self.parts: list[list[str]] = []  # rendered pieces per sentence, aligned with the template's pieces
        self.templates: list[_Template] = []
        self.step_bits: list[float] = []
        self.state = state
        self.bound_at: dict[str, int] = {}  # entity -> index of the sentence that first shows it

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _emit(story: _Story, rng: random.Random, candidates: list[_Template] | tuple[_Template, ...], bits: float) -> None:
    """Pick a template uniformly from candidates, fill it, and append the sentence with its information content."""
    tpl = rng.choice(candidates)
    bits += _LOG2[len(candidates)]
    state = story.state
    out = tpl.pieces[:]
    for i, name in tpl.slots:
        options = _FREE.get(name)
        if options is not None:
            out[i] = rng.choice(options)
            bits += _LOG2[len(options)]
            continue
        value = state.get(name)
        if value is None:
            options = _entity_options(name, state)
            value = state[name] = rng.choice(options)
            story.bound_at[name] = len(story.sentences)
            bits += _LOG2[len(options)]
        out[i] = value
    for i, name in tpl.derived:
        out[i] = _derived(name, out[i + 2] if i + 2 < len(out) else "", state["Name"])
    story.sentences.append("".join(out))
    story.parts.append(out)
    story.templates.append(tpl)
    story.step_bits.append(bits)


def _sample_story(rng: random.Random, preset: dict | None = None) -> _Story:
    """One story. `preset` fixes entities (for chat requests such as "a story about a cat"); the bits of a story
    with presets are then conditional on them."""
    story = _Story(dict(preset or {}))
    for name in story.state:
        story.bound_at[name] = 0
    _emit(story, rng, OPENINGS, 0.0)
    first, second = (INTRO_OBJECT, INTRO_PET) if rng.getrandbits(1) else (INTRO_PET, INTRO_OBJECT)
    _emit(story, rng, first, 1.0)
    _emit(story, rng, second, 0.0)
    num_body = rng.randint(_K_MIN, _K_MAX)
    used: set[_Template] = set()
    for _ in range(num_body):
        _emit(story, rng, _candidates(BODY, story.state, used), 0.0)
        used.add(story.templates[-1])
    _emit(story, rng, _candidates(CLOSINGS, story.state, used), 0.0)
    _emit(story, rng, ENDINGS, 0.0)
    story.step_bits.append(math.log2(_K_MAX - _K_MIN + 1))
    return story


def _match(tpl: _Template, tokens: list[str], pos: int, state: dict) -> tuple[dict, float] | None:
    """Match tpl against tokens[pos:] as a prefix; return the entities it binds and the bits of its slots."""
    if pos + len(tpl.tokens) > len(tokens):
        return None
    bound: dict[str, str] = {}
    bits = 0.0
    for j, (is_slot, want) in enumerate(tpl.tokens):
        tok = tokens[pos + j]
        if not is_slot:
            if tok != want:
                return None
        elif want in _DERIVED:
            continue  # checked below, once every entity of the sentence is known
        elif want in _FREE_SETS:
            if tok not in _FREE_SETS[want]:
                return None
            bits += math.log2(len(_FREE[want]))
        elif want in state or want in bound:
            if tok != state.get(want, bound.get(want)):
                return None
        else:
            options = _entity_options(want, {**state, **bound})
            if tok not in options:
                return None
            bound[want] = tok
            bits += math.log2(len(options))
    hero = state.get("Name", bound.get("Name"))
    for j, (is_slot, want) in enumerate(tpl.tokens):
        if is_slot and want in _DERIVED:
            expected = _derived(want, tokens[pos + j + 1] if pos + j + 1 < len(tokens) else "", hero)
            if tokens[pos + j] != expected:
                return None
    return bound, bits


def _parse_story(text: str) -> list[float]:
    """Recover the choices behind a story from its text alone; return the bits of each step, in the order
    `_sample_story` records them. Raises ValueError if the text has no parse or more than one at some step."""
    tokens = _TOKEN_RE.findall(text)
    state: dict[str, str] = {}
    pos = 0
    steps: list[float] = []

    def step(candidates: list[tuple[_Template, float]]) -> _Template:
        nonlocal pos
        hits = [(t, cost, m) for t, cost in candidates if (m := _match(t, tokens, pos, state)) is not None]
        if len(hits) != 1:
            raise ValueError(f"{len(hits)} parses at token {pos}: {' '.join(tokens[pos:pos + 12])!r}")
        tpl, cost, (bound, bits) = hits[0]
        state.update(bound)
        pos += len(tpl.tokens)
        steps.append(cost + bits)
        return tpl

    step([(t, math.log2(len(OPENINGS))) for t in OPENINGS])
    intro = step([(t, 1 + math.log2(len(g))) for g in (INTRO_OBJECT, INTRO_PET) for t in g])
    second = INTRO_PET if intro in INTRO_OBJECT else INTRO_OBJECT
    step([(t, math.log2(len(second))) for t in second])
    used: set[_Template] = set()
    while True:
        candidates = []
        if len(used) < _K_MAX:
            body = _candidates(BODY, state, used)
            candidates += [(t, math.log2(len(body))) for t in body]
        closings = _candidates(CLOSINGS, state, used)
        if len(used) >= _K_MIN:
            candidates += [(t, math.log2(len(closings))) for t in closings]
        tpl = step(candidates)
        if tpl in closings:
            break
        used.add(tpl)
    step([(t, math.log2(len(ENDINGS))) for t in ENDINGS])
    if pos != len(tokens):
        raise ValueError(f"trailing text after the story: {' '.join(tokens[pos:pos + 12])!r}")
    steps.append(math.log2(_K_MAX - _K_MIN + 1))
    return steps


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int (got {value!r})")


def generate_stories(seed: int, num_docs: int) -> tuple[list[str], float]:
    """`num_docs` stories and their true entropy in bits per UTF-8 byte (the floor for any model's bits per byte).
    See `generate_corpus` for the pretraining corpus, which also has notes."""
    _check_count("num_docs", num_docs)
    if num_docs == 0:
        raise ValueError("num_docs must be >= 1: the entropy of an empty corpus is undefined")
    rng = random.Random(f"stories:{seed}")
    texts: list[str] = []
    bits = 0.0
    num_bytes = 0
    for _ in range(num_docs):
        story = _sample_story(rng)
        text = story.text
        texts.append(text)
        bits += sum(story.step_bits)
        num_bytes += len(text)  # ASCII: characters are bytes
    return texts, bits / num_bytes


# ---------------------------------------------------------------------------------------------------------- notes

# Notes: a child lists their pets and toys and asks about them back ("My dog is called Rex and my cat is called Tom.
# My kite is red. What is my cat called? My cat is called Tom."). Every thing in a note is new, so answering means
# binding each name or colour to its own thing, with others of the same kind beside it: the skill behind a chat's
# "My cat is called Bubbles. ... My dog is called Max. What is my dog called?". Stories never have two pets or two
# toys, so without notes the model learns "copy the name / colour in the context" and picks the wrong one. A toy is
# named before its colour ("My kite is red."), as a pet before its name: the answer then follows the same words as in
# the statement ("kite is" -> red). Stories say "a red kite", which notes never do, so a note's new toy does not teach
# the story's "red" -> "kite" copy otherwise.
_NOTE_UNITS = (3, 8)  # units (statements or questions) per note, uniform
_NOTE_FACTS = 6  # things a note tells at most


def _statement(facts: list[tuple[str, str, str]]) -> str:
    """One sentence stating one or two facts of one kind: "My dog is called Rex and my cat is called Tom.", "My kite is
    red." (a thing before its value, so the answer repeats the statement's words up to the value)."""
    verb = " is called " if facts[0][0] == "pet" else " is "
    return "My " + " and my ".join(f"{thing}{verb}{value}" for _, thing, value in facts) + "."


def _note_units(rng: random.Random) -> tuple[list[str], float]:
    """The units of one note and their information content in bits. Each choice is uniform and shows in the text:
    the number of units; per unit, statement or question (forced when nothing is told yet or all is told); a
    statement's kind (pet or toy) and count (one or two things, one when only one more fits); every new value (drawn
    from those not used in the note); a question's fact (any told one)."""
    animals, pets = list(ANIMALS), list(PET_NAMES)
    objects, colors = list(OBJECTS), list(COLORS)
    told: list[tuple[str, str, str]] = []
    num = rng.randint(*_NOTE_UNITS)
    bits = math.log2(_NOTE_UNITS[1] - _NOTE_UNITS[0] + 1)
    units = []

    def draw(pool: list[str]) -> str:
        nonlocal bits
        bits += math.log2(len(pool))
        return pool.pop(rng.randrange(len(pool)))

    for _ in range(num):
        can_state, can_ask = len(told) < _NOTE_FACTS, bool(told)
        if can_state and can_ask:
            bits += 1
        if can_state and (not can_ask or rng.getrandbits(1)):
            kind = ("pet", "toy")[rng.getrandbits(1)]
            count = 1 if len(told) == _NOTE_FACTS - 1 else 1 + rng.getrandbits(1)
            bits += 1 + (len(told) < _NOTE_FACTS - 1)
            facts = [(kind, draw(animals), draw(pets)) if kind == "pet" else (kind, draw(objects), draw(colors))
                     for _ in range(count)]
            told += facts
            units.append(_statement(facts))
        else:
            kind, thing, value = told[rng.randrange(len(told))]
            bits += math.log2(len(told))
            units.append(f"What is my {thing} called? My {thing} is called {value}." if kind == "pet" else
                         f"What color is my {thing}? My {thing} is {value}.")
    return units, bits


def generate_corpus(seed: int, num_docs: int, notes_every: int = 0) -> tuple[list[str], float]:
    """The built-in pretraining corpus: `num_docs` documents, every `notes_every`-th a note (0: none) and the rest
    stories, and their true entropy in bits per UTF-8 byte (the floor for any model's bits per byte)."""
    _check_count("num_docs", num_docs)
    if num_docs == 0:
        raise ValueError("num_docs must be >= 1: the entropy of an empty corpus is undefined")
    stories, notes = random.Random(f"stories:{seed}"), random.Random(f"notes:{seed}")
    texts: list[str] = []
    bits = 0.0
    num_bytes = 0
    for i in range(num_docs):
        if notes_every and i % notes_every == notes_every - 1:
            units, doc_bits = _note_units(notes)
            text = " ".join(units)
        else:
            story = _sample_story(stories)
            text, doc_bits = story.text, sum(story.step_bits)
        texts.append(text)
        bits += doc_bits
        num_bytes += len(text)  # ASCII: characters are bytes
    return texts, bits / num_bytes


# ------------------------------------------------------------------------------------------------------ hellaswag

_FACT_LABELS = {"Name": "hero", "color": "object color", "object": "object", "animal": "pet animal", "pet": "pet name",
                "place": "place", "friend": "friend"}
# The needed fact must appear this close to the end of ctx, so a short-context model can still find it.
_FACT_WINDOW_WORDS = 100


def _hellaswag_item(rng: random.Random, ind: int, seed: int, kind: str) -> dict:
    """An item that asks for the fact `kind` (an entity slot): stories are drawn until one repeats that fact."""
    while True:
        story = _sample_story(rng)
        # Candidate cut points: an entity slot in sentence j whose value was shown before j. A slot right after
        # {a} is skipped, since "an" would tell which words can follow.
        by_kind: dict[str, list[tuple[int, int]]] = {}
        for j in range(3, len(story.sentences)):
            tpl = story.templates[j]
            for i, name in tpl.slots:
                if name in _ENTITIES and story.bound_at[name] < j and not (i >= 2 and tpl.pieces[i - 2] == "a"):
                    by_kind.setdefault(name, []).append((j, i))
        if kind not in by_kind:
            continue
        j, i = rng.choice(by_kind[kind])
        if i >= 2 and story.templates[j].pieces[i - 2] == "pl":
            i -= 2  # cut before the place's epithet, which would name the place
        parts = story.parts[j]
        ctx_a = " ".join(story.sentences[:j])
        ctx_b = "".join(parts[:i]).strip()
        ctx = f"{ctx_a} {ctx_b}" if ctx_b else ctx_a
        true = story.state[kind]
        ctx_words = _TOKEN_RE.findall(ctx)
        if true in ctx_words[-_FACT_WINDOW_WORDS:]:
            break
    # Wrong values come from the same uniform list as the true one (so word frequency says nothing) and never
    # appear in ctx (so each wrong ending contradicts it). A wrong hero keeps the hero's gender so the pronouns
    # already in ctx are no tell either.
    pool = (GIRL_NAMES, BOY_NAMES)[_GENDER[true]] if kind == "Name" else _ENTITIES[kind]
    seen = set(ctx_words)
    wrong = rng.sample([v for v in pool if v != true and v not in seen], 3)
    endings = []
    for value in wrong:
        out = parts[:]
        for p, name in story.templates[j].slots:
            if p >= i and name == kind:
                out[p] = value
        for p, name in story.templates[j].derived:
            if p >= i and name in ("a", "pl"):
                out[p] = _derived(name, out[p + 2], story.state["Name"])
        endings.append("".join(out[i:]))
    label = rng.randrange(4)
    endings.insert(label, "".join(parts[i:]))
    return {"ind": ind, "activity_label": f"Story: {_FACT_LABELS[kind]}", "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx,
            "endings": endings, "label": label, "split": "val", "split_type": "indomain",
            "source_id": f"synthetic-{seed}-{ind}"}


def generate_hellaswag(seed: int, num_items: int) -> list[dict]:
    """`num_items` items in the official HellaSwag jsonl schema. ctx is the start of a story from the pretraining
    distribution (a separate random stream, so not a training document), cut where a fact from ctx is repeated; the
    three wrong endings swap in another value of the same kind and so contradict ctx. The kinds of fact take turns
    (hero, colour, object, species, pet name, place, friend), so each kind has enough items to be scored on its own,
    the rare ones (the friend is in half of the stories) included."""
    _check_count("num_items", num_items)
    rng = random.Random(f"hellaswag:{seed}")
    kinds = sorted(_ENTITIES)
    return [_hellaswag_item(rng, ind, seed, kinds[ind % len(kinds)]) for ind in range(num_items)]


def unigram_accuracy(train_texts: list[str], items: list[dict]) -> tuple[float, float]:
    """(acc, acc_norm) of a context-free word unigram model with add-one smoothing: acc ranks endings by total
    log-prob, acc_norm by mean log-prob per word. Near 0.25 means the items can only be solved from the context."""
    if not items:
        raise ValueError("unigram_accuracy needs at least one item")
    counts = Counter(w for text in train_texts for w in _WORD_RE.findall(text.lower()))
    total, vocab = sum(counts.values()), len(counts) + 1  # +1: one bucket for unseen words
    correct = correct_norm = 0
    for item in items:
        scores, norms = [], []
        for ending in item["endings"]:
            words = _WORD_RE.findall(ending.lower()) or [""]
            logp = sum(math.log((counts[w] + 1) / (total + vocab)) for w in words)
            scores.append(logp)
            norms.append(logp / len(words))
        correct += max(range(4), key=scores.__getitem__) == item["label"]
        correct_norm += max(range(4), key=norms.__getitem__) == item["label"]
    return correct / len(items), correct_norm / len(items)
