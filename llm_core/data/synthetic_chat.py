"""The built-in world's chats: SFT conversations (questions about a story, requests for a story, facts told and asked
back over several turns) and the held-out questions `eval_chat` grades. The world itself (names, things, stories,
notes) is `synthetic.py`'s.
"""

from __future__ import annotations

import random

from llm_core.data.synthetic import (_GENDER, _PRONOUNS, ANIMALS, COLORS, EPITHETS, FRIEND_NAMES, NAMES, OBJECTS,
                                     PET_NAMES, PLACES, _article, _check_count, _sample_story, _statement)

# ---------------------------------------------------------------------------------------------------------- chats

_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a friendly assistant who answers questions about stories.",
    "You are a kind storyteller for children.",
)
_STORY_PROMPTS = (
    "{story}\n\n{question}",
    "Here is a story:\n\n{story}\n\n{question}",
    "Read the story and answer the question.\n\nStory: {story}\n\nQuestion: {question}",
)
# kind -> (entities it needs, question, answer); formatted with the story's state plus a few derived words.
_QUESTIONS = {
    "color": (("Name", "object", "color"), "What color was {Name}'s {object}?", "{Name}'s {object} was {color}."),
    "object": (("Name", "object", "color"), "What {color} thing did {Name} have?",
               "{Name} had {a_color} {color} {object}."),
    "pet": (("Name", "animal", "pet"), "What was the name of {Name}'s {animal}?", "The {animal} was named {pet}."),
    "animal": (("pet", "animal"), "What kind of animal was {pet}?", "{pet} was {a_animal} {animal}."),
    "place": (("Name", "place"), "Where did {Name} go?", "{Name} went to the {pl} {place}."),
    "friend": (("Name", "friend"), "Who did {Name} meet?", "{Name} met {his} friend {friend}."),
    "hero": (("Name",), "What was the name of the {girl} in the story?", "The {girl} in the story was named {Name}."),
}


def _fields(state: dict) -> dict:
    fields = dict(state)
    fields.update({word: forms[_GENDER[state["Name"]]] for word, forms in _PRONOUNS.items()})  # {girl}, {his}, ...
    fields["a_color"] = _article(state.get("color", "x"))
    fields["a_animal"] = _article(state.get("animal", "x"))
    fields["pl"] = EPITHETS.get(state.get("place"))
    return fields


def _story_questions(rng: random.Random) -> list[dict]:
    story = _sample_story(rng)
    fields = _fields(story.state)
    kinds = [k for k, (needs, _, _) in _QUESTIONS.items() if all(n in story.state for n in needs)]
    messages = []
    chosen = rng.sample(kinds, rng.randint(1, 3))
    # A friend is in half of the stories and comes back about once in those, so the pretrained model copies it
    # least reliably: a chat about a story with a friend always asks about the friend too.
    if "friend" in kinds and "friend" not in chosen:
        chosen[rng.randrange(len(chosen))] = "friend"
    for turn, kind in enumerate(chosen):
        _, question, answer = _QUESTIONS[kind]
        question = question.format(**fields)
        if turn == 0:
            question = rng.choice(_STORY_PROMPTS).format(story=story.text, question=question)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer.format(**fields)}]
    return messages


def _story_request(rng: random.Random) -> list[dict]:
    kind = rng.randrange(4)
    if kind == 0:
        preset = {"animal": rng.choice(ANIMALS)}
        prompt = rng.choice(("Tell me a story about {a} {animal}.", "Can you write a short story about {a} {animal}?"))
        prompt = prompt.format(a=_article(preset["animal"]), **preset)
    elif kind == 1:
        preset = {"Name": rng.choice(NAMES)}
        girl = _PRONOUNS["girl"][_GENDER[preset["Name"]]]
        prompt = f"Write a short story about a {girl} named {preset['Name']}."
    elif kind == 2:
        preset = {"color": rng.choice(COLORS), "object": rng.choice(OBJECTS)}
        prompt = f"Tell me a story about {_article(preset['color'])} {preset['color']} {preset['object']}."
    else:
        preset = {}
        prompt = rng.choice(("Tell me a story.", "Please tell me a short story.", "Can you tell me a bedtime story?"))
    story = _sample_story(rng, preset)
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": story.text}]


class _Facts:
    """Facts a user tells about their own things: pets' names ("My dog is called Rex.") and objects' colours ("I have
    a red ball."). Within one conversation every animal, pet name, object and colour is new, so a question about one
    fact always has others of the same kind beside it to confuse it with."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.animals, self.pets = rng.sample(ANIMALS, len(ANIMALS)), rng.sample(PET_NAMES, len(PET_NAMES))
        self.objects, self.colors = rng.sample(OBJECTS, len(OBJECTS)), rng.sample(COLORS, len(COLORS))
        self.told: list[tuple[str, str, str]] = []  # (kind, thing, value): ("pet", "dog", "Rex"), ("color", "ball", "red")

    def new(self, kind: str) -> tuple[str, str, str]:
        fact = (kind, self.animals.pop(), self.pets.pop()) if kind == "pet" else \
            (kind, self.objects.pop(), self.colors.pop())
        self.told.append(fact)
        return fact


def _ask(fact: tuple[str, str, str]) -> tuple[str, str]:
    kind, thing, value = fact
    if kind == "pet":
        return f"What is my {thing} called?", f"Your {thing} is called {value}."
    return f"What color is my {thing}?", f"Your {thing} is {value}."


def _fact_chat(rng: random.Random) -> list[dict]:
    """Facts stated, then asked back, over up to four turns: a turn may state new facts (one or two of a kind) and ask
    about one of them or about an earlier one, or only ask about an earlier one. The shortest form of "find it in the
    context", with distractors of the same kind: the model must bind each value to its own thing. A conversation
    keeps to one kind of fact (a turn switches with probability 0.2): a question about a pet among pets (or a toy among
    toys) needs the binding, one about a pet among toys is answered by the question's form alone."""
    facts = _Facts(rng)
    messages: list[dict] = []
    kind = rng.choice(("pet", "color"))
    for turn in range(rng.randint(1, 4)):
        stated: list[tuple[str, str, str]] = []
        if turn == 0 or rng.random() < 0.75:
            if rng.random() < 0.2:
                kind = "color" if kind == "pet" else "pet"
            stated = [facts.new(kind) for _ in range(rng.randint(1, 2))]
        earlier = [f for f in facts.told if f not in stated]
        target = rng.choice(stated) if stated and (not earlier or rng.random() < 0.6) else rng.choice(earlier)
        question, answer = _ask(target)
        content = f"{_statement(stated)} {question}" if stated else question
        messages += [{"role": "user", "content": content}, {"role": "assistant", "content": answer}]
    return messages


def generate_chats(seed: int, num_convs: int) -> list[list[dict]]:
    """`num_convs` SFT conversations about the story world: questions on a given story, story requests, and facts
    stated then asked (over several turns). Each is [optional system] + alternating user/assistant turns ending with
    the assistant."""
    _check_count("num_convs", num_convs)
    rng = random.Random(f"chats:{seed}")
    convs = []
    for _ in range(num_convs):
        r = rng.random()
        messages = _story_questions(rng) if r < 0.2 else _story_request(rng) if r < 0.25 else _fact_chat(rng)
        if rng.random() < 0.25:
            messages.insert(0, {"role": "system", "content": rng.choice(_SYSTEM_PROMPTS)})
        convs.append(messages)
    return convs


# Entity slots of the answers and the words each can take: a reply names the right value and no other one.
_SLOT_VALUES = {"Name": NAMES, "friend": FRIEND_NAMES, "color": COLORS, "object": OBJECTS, "animal": ANIMALS, "pet": PET_NAMES,
                "place": PLACES}


def _graded(kind: str, messages: list[dict], answer: str, fields: dict) -> dict:
    """An eval item: the words the reply must contain (the answer's entities) and the ones that contradict it (every
    other value those entities could take)."""
    slots = [name for name in _SLOT_VALUES if "{" + name + "}" in answer]
    required = sorted({fields[name] for name in slots})
    wrong = sorted({v for name in slots for v in _SLOT_VALUES[name]} - set(required))
    return {"kind": kind, "messages": messages, "reference": answer.format(**fields), "required": required,
            "wrong": wrong}


def _fact_item(kind: str, rng: random.Random) -> dict:
    """A graded fact question. stated_pet: one pet stated and asked; stated_color: two coloured objects stated, one
    asked; followup_new: a fact stated and answered, then another of the same kind stated and asked; followup_earlier:
    two facts of a kind stated and answered in turn, then the first asked again. Earlier assistant turns hold the
    reference answers."""
    facts = _Facts(rng)
    fact_kind = "color" if kind == "stated_color" else "pet" if kind == "stated_pet" else rng.choice(("pet", "color"))
    turns = {"stated_pet": [1], "stated_color": [2], "followup_new": [1, 1], "followup_earlier": [1, 1, 0]}[kind]
    messages: list[dict] = []
    for n in turns:
        stated = [facts.new(fact_kind) for _ in range(n)]
        target = rng.choice(stated) if stated else facts.told[0]
        question, answer = _ask(target)
        messages += [{"role": "user", "content": f"{_statement(stated)} {question}" if stated else question},
                     {"role": "assistant", "content": answer}]
    _, thing, value = target
    if fact_kind == "pet":
        return _graded(kind, messages[:-1], "Your {animal} is called {pet}.", {"animal": thing, "pet": value})
    return _graded(kind, messages[:-1], "Your {object} is {color}.", {"object": thing, "color": value})


FACT_KINDS = ("stated_pet", "stated_color", "followup_new", "followup_earlier")


def generate_chat_eval(seed: int, num_items: int) -> list[dict]:
    """Held-out questions of the kinds the SFT chats teach: one question on a new story (each kind of `_QUESTIONS`
    in turn), or facts stated then asked back, in one turn or across turns (`FACT_KINDS`). Use a seed the SFT data
    does not use."""
    _check_count("num_items", num_items)
    rng = random.Random(f"chat-eval:{seed}")
    items: list[dict] = []
    kinds = list(_QUESTIONS) + list(FACT_KINDS)
    while len(items) < num_items:
        kind = kinds[len(items) % len(kinds)]
        if kind in FACT_KINDS:
            items.append(_fact_item(kind, rng))
            continue
        needs, question, answer = _QUESTIONS[kind]
        story = _sample_story(rng)
        if not all(n in story.state for n in needs):
            continue
        fields = _fields(story.state)
        content = rng.choice(_STORY_PROMPTS).format(story=story.text, question=question.format(**fields))
        items.append(_graded(kind, [{"role": "user", "content": content}], answer, fields))
    return items


