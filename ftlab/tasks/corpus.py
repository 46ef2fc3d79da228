"""A small synthetic English for pretraining GPT-2: short stories and dialogues from a grammar.

Vocabulary (a few thousand distinct words, built combinatorially from word lists):

* names: a syllable onset and an ending, ``"Ma" + "ra" -> "Mara"`` (30 x 24 = 720 names); the
  ending fixes the pronoun (``"-ra"`` she, ``"-lo"`` he);
* towns: a first part and a suffix, ``"Maple" + "ton" -> "Mapleton"``;
* nouns (animals, objects, foods, places) with their plurals, adjectives with comparative and
  superlative forms, verbs with four forms (base, third person, past, -ing). Irregular forms are
  listed; regular ones follow the spelling rules in ``plural``, ``third_person``, ``past``,
  ``present_participle`` and ``comparative``, which the instruction task reuses.

Documents come in three kinds (40% stories, 25% dialogues, 35% lessons):

* a **story** (past tense, 8 to 14 sentences): a character, a friend, an object and places,
  with quoted speech, e.g. ``Once upon a time, there was a brave fox named Mara. ... "Look at my
  red kite!" said Mara. ...``;
* a **dialogue** (present tense, ``Name: line`` turns separated by newlines), e.g.
  ``Tolo: What color is your kite?`` / ``Mara: My kite is red.``;
* a **lesson**, a dialogue in which a teacher and a pupil play word games: repeat words, say them
  backwards, name the first or last word, count them, plurals, past tenses, who has which object,
  e.g. ``Mara: Say these words after me: red fox cup.`` / ``Tolo: red fox cup.`` /
  ``Mara: Now say them backwards.`` / ``Tolo: cup fox red.`` or ``Mara: What is the past tense
  of hop?`` / ``Tolo: The past tense of hop is hopped.``

Facts stay consistent within a document (the colour asked about is the colour given, the object
that gets lost is the one found earlier), so there is more to learn than word frequencies. The
lessons plant the skills that ``ftlab.tasks.instructions`` later asks for in another format, as
web text plants them in a real language model before instruction tuning.

Splits: ``make_corpus`` draws documents from one seeded stream, drops repeats, and deals them to
train, validation and test in turn, so the three splits share no document.
"""
from __future__ import annotations

import random
import re

from ftlab.tasks import distinct_documents, split_sizes

# ---------------------------------------------------------------- word lists
NAME_ONSETS = ["Ma", "Li", "To", "Ka", "Be", "Ro", "Su", "Da", "Ni", "Fe", "Jo", "Ti", "Ra", "Lo", "Mi",
               "Pe", "Sa", "Ve", "Go", "Ha", "Ne", "Bo", "Ze", "Wi", "Ta", "Mo", "Lu", "Di", "Ke", "Po", "Ba", "Fi",
               "Ju", "Le", "Na", "Vi"]
SHE_ENDINGS = ["ra", "na", "la", "sa", "ria", "ma", "ny", "lia", "ssa", "dra", "ya", "ri", "nna", "lie"]
HE_ENDINGS = ["lo", "ko", "do", "ro", "ti", "no", "bo", "to", "len", "dy", "rik", "mon", "gor", "ber"]
TOWN_FIRSTS = ["Maple", "Oak", "Pine", "Willow", "Stone", "River", "Green", "Sunny", "Honey", "Bright",
               "Apple", "Silver", "Cherry", "Copper", "Rose", "Elm"]
TOWN_SUFFIXES = ["ton", "field", "brook", "wood", "vale", "ford", "hill", "bury", "wick", "dale"]
# every character name with its pronoun (36 x 28 = 1008): [("Mara", "she"), ..., ("Malo", "he"), ...]
NAMES = [(onset + end, "she") for onset in NAME_ONSETS for end in SHE_ENDINGS] + \
        [(onset + end, "he") for onset in NAME_ONSETS for end in HE_ENDINGS]
TOWNS = [first + suffix for first in TOWN_FIRSTS for suffix in TOWN_SUFFIXES]  # "Mapleton", ...

ANIMALS = ["cat", "dog", "fox", "bird", "rabbit", "mouse", "bear", "frog", "duck", "owl", "horse", "cow",
           "sheep", "goat", "pig", "lion", "tiger", "wolf", "deer", "turtle", "fish", "bee", "ant", "snake",
           "monkey", "elephant", "squirrel", "hedgehog", "goose", "hen", "puppy", "kitten", "pony", "dragon",
           "whale", "seal", "crab", "otter", "badger", "beaver", "zebra", "giraffe", "panda", "koala",
           "parrot", "penguin", "donkey", "camel", "lamb", "chick", "raccoon", "mole", "lizard", "swan",
           "robin", "toad", "bat", "moose", "llama", "kangaroo", "hamster", "puffin", "walrus", "rhino"]
OBJECTS = ["ball", "kite", "box", "hat", "cup", "book", "toy", "boat", "drum", "key", "bell", "shoe", "sock",
           "spoon", "basket", "blanket", "lamp", "map", "ring", "stone", "stick", "leaf", "flower", "bucket",
           "brush", "coin", "feather", "pencil", "letter", "clock", "candle", "bottle", "jar", "bag", "bike",
           "car", "train", "rope", "shell", "button", "ribbon", "scarf", "glove", "umbrella", "teapot",
           "balloon", "puzzle", "crayon", "whistle", "kettle", "pillow", "wheel", "ladder", "knife", "dish",
           "glass", "watch", "bus", "wagon", "robot", "doll", "flute", "guitar", "piano", "compass", "lantern",
           "mirror", "necklace", "crown", "sword", "shield", "trumpet", "marble", "helmet", "tent", "sled",
           "backpack", "notebook", "paintbrush", "fork", "plate", "chair", "rocket", "castle", "wand", "cape",
           "banner", "bracelet", "fan", "pot", "pan", "tray", "sack", "net", "sail", "paddle"]
FOODS = ["apple", "cake", "pie", "cookie", "sandwich", "berry", "peach", "tomato", "potato", "carrot",
         "banana", "cherry", "pear", "plum", "muffin", "pancake", "cupcake", "biscuit", "lemon", "melon",
         "grape", "orange", "egg", "nut", "radish", "onion", "pumpkin", "pickle", "noodle", "dumpling",
         "pretzel", "waffle", "bun", "pea", "bean", "olive", "mango", "kiwi", "fig", "cracker"]
PLACES = ["park", "garden", "forest", "market", "school", "library", "kitchen", "farm", "meadow", "village",
          "cave", "pond", "field", "bakery", "barn", "house", "station", "zoo", "shop", "playground", "valley",
          "harbor", "museum", "orchard", "attic", "yard", "street", "square", "tower", "jungle", "desert",
          "swamp", "classroom", "hallway", "workshop", "greenhouse", "stable", "cottage", "palace"]

COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray",
          "golden", "silver"]
THING_ADJECTIVES = ["big", "small", "tiny", "huge", "little", "long", "short", "old", "new", "shiny", "soft",
                    "round", "heavy", "light", "warm", "cold", "wet", "dry", "clean", "dirty", "pretty",
                    "strange", "smooth", "rough", "tall", "fancy", "plain", "bright", "dark", "sharp",
                    "special", "beautiful", "wonderful", "magic", "broken", "sticky", "fluffy", "noisy"]
CHARACTER_ADJECTIVES = ["kind", "brave", "shy", "funny", "clever", "quiet", "loud", "sleepy", "hungry",
                        "grumpy", "curious", "friendly", "gentle", "busy", "lucky", "fast", "slow", "silly",
                        "proud", "wise", "young", "old", "little", "happy", "polite", "careful", "lazy",
                        "cheerful", "bold", "calm", "playful", "honest", "helpful", "patient", "clumsy"]
GOOD_FEELINGS = ["happy", "glad", "proud", "excited", "calm", "cheerful", "thankful", "joyful"]
BAD_FEELINGS = ["sad", "scared", "angry", "worried", "upset", "lonely", "grumpy", "nervous"]
COMPARABLE = ["big", "small", "tall", "short", "fast", "slow", "old", "young", "strong", "brave", "kind",
              "happy", "funny", "clever", "quiet", "loud", "hungry", "sleepy", "busy", "lucky", "wise", "shy"]

ACTIVITIES = ["play", "run", "jump", "sing", "dance", "swim", "climb", "hop", "skip", "walk", "rest", "read",
              "draw", "paint", "cook", "bake", "nap", "hum", "whistle", "wander", "explore", "splash", "dig",
              "race", "slide", "skate", "jog", "rollerskate", "sit", "sleep", "fish", "hike", "dream", "laugh",
              "shout", "work", "learn", "count", "clap", "march", "sail", "ride", "fly", "float", "crawl",
              "giggle", "whisper", "stretch", "juggle", "knit", "sew", "tiptoe", "yawn", "cheer", "wave"]
THING_ACTIONS = ["carry", "wash", "paint", "hold", "share", "hide", "clean", "polish", "lift", "push", "pull",
                 "drop", "keep", "fix", "find", "take", "bring", "throw", "catch", "spin", "shake", "hug",
                 "grab", "drag", "fold", "show", "borrow", "open", "close", "draw", "decorate", "tidy",
                 "kick", "toss", "roll", "wrap", "stack", "fill", "empty", "guard", "test", "check",
                 "measure", "mend", "dust", "rinse", "scrub", "weigh", "flip", "hang", "sort"]
FOOD_ACTIONS = ["eat", "cook", "bake", "share", "taste", "pick", "buy", "chop", "peel", "slice", "sell", "grow",
                "wash", "find", "love", "like", "want", "make", "see", "smell"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
TIMES = ["morning", "afternoon", "evening", "night"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]

IRREGULAR_PLURALS = {"mouse": "mice", "sheep": "sheep", "deer": "deer", "fish": "fish", "goose": "geese",
                     "wolf": "wolves", "leaf": "leaves", "knife": "knives", "tomato": "tomatoes",
                     "potato": "potatoes", "moose": "moose", "scarf": "scarves"}
IRREGULAR_PASTS = {"find": "found", "see": "saw", "take": "took", "throw": "threw", "catch": "caught",
                   "hold": "held", "make": "made", "build": "built", "bring": "brought", "buy": "bought",
                   "eat": "ate", "run": "ran", "sing": "sang", "swim": "swam", "sleep": "slept", "dig": "dug",
                   "hide": "hid", "give": "gave", "go": "went", "say": "said", "read": "read", "draw": "drew",
                   "ride": "rode", "fly": "flew", "sit": "sat", "spin": "spun", "shake": "shook", "feel": "felt",
                   "come": "came", "get": "got", "have": "had", "do": "did", "know": "knew", "keep": "kept",
                   "sell": "sold", "lose": "lost", "fall": "fell", "break": "broke", "meet": "met",
                   "tell": "told", "think": "thought", "slide": "slid", "win": "won", "leave": "left",
                   "grow": "grew", "hang": "hung", "smell": "smelled"}
IRREGULAR_THIRD = {"have": "has", "do": "does", "go": "goes"}
# one-syllable words ending consonant-vowel-consonant whose last letter doubles: hop -> hopped, big -> bigger
DOUBLING = {"hop", "skip", "jog", "clap", "hug", "drop", "grab", "drag", "hum", "nap", "dig", "swim", "run",
            "spin", "chop", "stop", "shop", "pat", "tap", "rub", "wag", "nod", "plan", "big", "sad", "hot",
            "wet", "thin", "fat", "dim", "sit", "win", "flip", "wrap", "scrub", "knit"}


def add_s(word: str, irregular: dict[str, str]) -> str:
    """English's -s ending, the same for plural nouns and he/she/it verbs: ``fox -> foxes``,
    ``berry -> berries``, ``run -> runs``; ``irregular`` lists the words that break the rule."""
    if word in irregular:
        return irregular[word]
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


def plural(noun: str) -> str:
    """The plural of a noun: ``fox -> foxes``, ``berry -> berries``, ``mouse -> mice``."""
    return add_s(noun, IRREGULAR_PLURALS)


def third_person(verb: str) -> str:
    """The present tense after he/she/it: ``run -> runs``, ``catch -> catches``, ``carry -> carries``."""
    return add_s(verb, IRREGULAR_THIRD)


def past(verb: str) -> str:
    """The past tense: ``jump -> jumped``, ``hop -> hopped``, ``carry -> carried``, ``find -> found``."""
    if verb in IRREGULAR_PASTS:
        return IRREGULAR_PASTS[verb]
    if verb.endswith("e"):
        return verb + "d"
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ied"
    if verb in DOUBLING:
        return verb + verb[-1] + "ed"
    return verb + "ed"


def present_participle(verb: str) -> str:
    """The -ing form: ``play -> playing``, ``dance -> dancing``, ``swim -> swimming``."""
    if verb.endswith("e") and not verb.endswith(("ee", "oe")):
        return verb[:-1] + "ing"
    if verb in DOUBLING:
        return verb + verb[-1] + "ing"
    return verb + "ing"


def comparative(adjective: str, suffix: str = "er") -> str:
    """``big -> bigger``, ``happy -> happier``, ``wise -> wiser``; ``suffix="est"`` gives the superlative."""
    if adjective.endswith("e"):
        return adjective + suffix[1:]
    if adjective.endswith("y") and adjective[-2] not in "aeiou":
        return adjective[:-1] + "i" + suffix
    if adjective in DOUBLING:
        return adjective + adjective[-1] + suffix
    return adjective + suffix


def vocabulary() -> set[str]:
    """Every content word form the grammar can produce (names, towns, nouns and plurals, adjective
    and verb forms, numbers), without the fixed function words of the templates."""
    words = {name for name, _ in NAMES} | set(TOWNS) | set(NUMBERS) | set(TIMES) | set(DAYS)
    for noun in ANIMALS + OBJECTS + FOODS + PLACES:
        words |= {noun, plural(noun)}
    words |= set(COLORS + THING_ADJECTIVES + CHARACTER_ADJECTIVES + GOOD_FEELINGS + BAD_FEELINGS)
    for adjective in COMPARABLE:
        words |= {adjective, comparative(adjective), comparative(adjective, "est")}
    for verb in ACTIVITIES + THING_ACTIONS + FOOD_ACTIONS:
        words |= {verb, third_person(verb), past(verb), present_participle(verb)}
    return words


# ---------------------------------------------------------------- stories
INTROS = [
    "Once upon a time, there was a {a_adj} {a_animal} named {A}.",
    "There once was a {a_adj} little {a_animal} called {A}.",
    "{A} was a {a_adj} {a_animal} who lived in {town}.",
    "Long ago, in the town of {town}, there lived a {a_adj} {a_animal} named {A}.",
]
SETTINGS = [
    "{a_He} lived in a small house near the {place}.",
    "Every {time}, {A} liked to {activity} in the {place}.",
    "{A} loved {foods} more than anything.",
    "{A} had {n} {a_animals} as neighbors.",
    "On {day}s, {a_he} always {activity_past} with {a_his} family.",
]
MEETINGS = [
    "One {time}, {A} met {B}, a {b_adj} {b_animal}, in the {place}.",
    "{a_His} best friend was {B}, a {b_adj} {b_animal} from {town}.",
    "One day, {A} saw a {b_adj} {b_animal} named {B} {b_activity_ing} near the {place}.",
]
# (narration, what the owner answers when asked where the object came from)
ORIGINS = [
    ("Soon after, {A} found a {color} {thing} in the {place2}.", "I found it in the {place2}"),
    ("{A} got a {thing_adj} {color} {thing} from {a_his} grandmother.", "My grandmother gave it to me"),
    ("{A} made a {color} {thing} all by {a_himself}.", "I made it myself"),
    ("At the market, {A} bought a {thing_adj} {color} {thing}.", "I bought it at the market"),
]
TALKS = [
    '"Look at my {thing}!" said {A}. "It is {color}."',
    '"What a {thing_adj} {thing}!" said {B}. "Can I {thing_action} it too?"',
    '"Where did you get it?" asked {B}. "{origin_answer}," said {A}.',
    '"Do you want to {thing_action} my {thing}?" asked {A}. "Yes, please!" said {B}.',
    '"I like your {color} {thing}," said {B}. "Thank you," said {A}.',
]
ACTIONS = [
    "{A} and {B} {thing_action_past} the {thing} together.",
    "They {activity_past} in the {place2} until it was dark.",
    "{B} was {comparative} than {A}, so {b_he} {thing_action_past} the {thing}.",
    "Then they ate {n} {foods} and {activity_past} in the {place}.",
    "{A} {thing_action_past} the {thing}, and {B} laughed.",
]
# (what happened to the object, how the friends made it right)
MISHAPS = [
    ("rolled away into the {place2}", "{B} helped {a_him} look for it, and soon they found it."),
    ("got stuck in a tall tree", "{B} climbed the tree and got it down."),
    ("broke into two pieces", "{B} helped {a_him} fix it with some glue."),
    ("fell into the mud", "{B} helped {a_him} wash it until it was clean."),
    ("was taken by a {c_adj} {c_animal}", '"Please give it back," said {B}. The {c_animal} gave it back.'),
]
ENDINGS = [
    "In the end, {A} and {B} became good friends.",
    "That {time}, {A} went home {good} and tired.",
    "From that day on, {A} and {B} played with the {thing} every {time}.",
    "{A} smiled. It was the best day ever.",
    "{A} and {B} were very {good}.",
]

# ---------------------------------------------------------------- dialogues
GREETINGS = [
    ["{A}: Hello, {B}!", "{B}: Hello, {A}! How are you?", "{A}: I am {good}. I have a new {thing}."],
    ["{A}: Good {time}, {B}!", "{B}: Good {time}, {A}. You look {good} today.",
     "{A}: Yes! I have a new {thing}."],
]
QUESTIONS = [
    ["{B}: What color is your {thing}?", "{A}: My {thing} is {color}."],
    ["{B}: Where did you get it?", "{A}: {origin_answer}."],
    ["{B}: How many {things} do you have?", "{A}: I have {count_things}."],
    ["{B}: Do you like {foods}?", "{A}: Yes, I love {foods}!"],
    ["{B}: Do you like {foods2}?", "{A}: No, I like {foods} more."],
    ["{B}: What do you like to do in the {place}?", "{A}: I like to {activity} there."],
    ["{B}: What did you do yesterday?", "{A}: I {activity_past} in the {place} with my {thing}."],
    ["{B}: Is your {thing} {thing_adj}?", "{A}: Yes, it is very {thing_adj}."],
]
CLOSINGS = [
    ["{B}: Can I {thing_action} your {thing}?", "{A}: Yes, you can. Let us go to the {place2}."],
    ["{B}: Goodbye, {A}!", "{A}: Goodbye, {B}! See you tomorrow."],
    ["{B}: I have to go home now.", "{A}: Goodbye, {B}. Come back on {day}!"],
]

_HIM = {"she": "her", "he": "him"}
_HIS = {"she": "her", "he": "his"}


def _fields(rng: random.Random) -> dict:
    """Draw the facts of one document: characters, object, places, food, numbers."""
    (a, a_pron), (b, b_pron) = rng.sample(NAMES, 2)
    n = rng.choice(NUMBERS[1:])
    count = rng.choice(NUMBERS)
    activity = rng.choice(ACTIVITIES)
    thing_action = rng.choice(THING_ACTIONS)
    thing = rng.choice(OBJECTS)
    a_animal, b_animal, c_animal = rng.sample(ANIMALS, 3)
    foods, foods2 = (plural(f) for f in rng.sample(FOODS, 2))
    place, place2 = rng.sample(PLACES, 2)
    f = {
        "A": a, "B": b, "town": rng.choice(TOWNS), "time": rng.choice(TIMES), "day": rng.choice(DAYS),
        "a_he": a_pron, "a_He": a_pron.capitalize(), "a_him": _HIM[a_pron], "a_his": _HIS[a_pron],
        "a_His": _HIS[a_pron].capitalize(), "a_himself": _HIM[a_pron] + "self", "b_he": b_pron,
        "a_adj": rng.choice(CHARACTER_ADJECTIVES), "b_adj": rng.choice(CHARACTER_ADJECTIVES),
        "c_adj": rng.choice(CHARACTER_ADJECTIVES), "a_animal": a_animal, "a_animals": plural(a_animal),
        "b_animal": b_animal, "c_animal": c_animal,
        "thing": thing, "things": plural(thing), "color": rng.choice(COLORS),
        "thing_adj": rng.choice(THING_ADJECTIVES), "place": place, "place2": place2,
        "foods": foods, "foods2": foods2, "n": n,
        "count_things": f"one {thing}" if count == "one" else f"{count} {plural(thing)}",
        "activity": activity, "activity_past": past(activity),
        "b_activity_ing": present_participle(rng.choice(ACTIVITIES)),
        "thing_action": thing_action, "thing_action_past": past(thing_action),
        "comparative": comparative(rng.choice(COMPARABLE)), "good": rng.choice(GOOD_FEELINGS),
        "bad": rng.choice(BAD_FEELINGS),
    }
    origin, f["origin_answer_template"] = rng.choice(ORIGINS)
    f["origin"] = origin
    f["origin_answer"] = f["origin_answer_template"].format(**f)
    return f


def use_an(text: str) -> str:
    """Use "an" before a vowel: "a orange kite" -> "an orange kite"."""
    return re.sub(r"\b([Aa]) (?=[aeiouAEIOU])", r"\1n ", text)


def make_story(rng: random.Random) -> str:
    """One story: intro, setting, meeting, object, talk, actions, maybe a mishap, ending."""
    f = _fields(rng)
    lines = [rng.choice(INTROS)]
    lines += rng.sample(SETTINGS, rng.randint(1, 2))
    lines += [rng.choice(MEETINGS), f["origin"]]
    lines += rng.sample(TALKS, rng.randint(1, 3))
    lines += rng.sample(ACTIONS, rng.randint(1, 2))
    if rng.random() < 0.5:
        mishap, fix = rng.choice(MISHAPS)
        lines += ["But then the {thing} " + mishap + ".", "{A} was very {bad}.", fix]
    lines.append(rng.choice(ENDINGS))
    return use_an(" ".join(line.format(**f) for line in lines))


def make_dialogue(rng: random.Random) -> str:
    """One dialogue: a greeting, two or three questions with consistent answers, a closing."""
    f = _fields(rng)
    turns = list(rng.choice(GREETINGS))
    for pair in rng.sample(QUESTIONS, rng.randint(2, 3)):
        turns += pair
    turns += rng.choice(CLOSINGS)
    return use_an("\n".join(turn.format(**f) for turn in turns))


# ---------------------------------------------------------------- lessons
GAME_WORDS = sorted(set(COLORS + ANIMALS + OBJECTS + FOODS + THING_ADJECTIVES))


def _word_game(rng: random.Random, a: str, b: str) -> list[str]:
    words = rng.sample(GAME_WORDS, rng.randint(2, 7))
    if rng.random() < 0.3:  # backwards straight away, with no repetition to lean on
        return [f"{a}: Say these words backwards: {' '.join(words)}.", f"{b}: {' '.join(words[::-1])}."]
    turns = [f"{a}: Say these words after me: {' '.join(words)}.", f"{b}: {' '.join(words)}."]
    follow_ups = [
        [f"{a}: Now say them backwards.", f"{b}: {' '.join(words[::-1])}."],
        [f"{a}: Which word did I say last?", f"{b}: You said {words[-1]} last."],
        [f"{a}: Which word did I say first?", f"{b}: You said {words[0]} first."],
        [f"{a}: How many words was that?", f"{b}: That was {NUMBERS[len(words) - 1]} words."],
    ]
    for pair in rng.sample(follow_ups, rng.randint(1, 3)):
        turns += pair
    return turns


def _form_game(rng: random.Random, words: list[str], exchanges) -> list[str]:
    """Turns about a form (a plural, a past tense) of 1 to 3 of ``words``: ``exchanges(word)`` gives two ways to
    ask for it (each a question and its answer), and a coin flip picks one for each word."""
    turns = []
    for word in rng.sample(words, rng.randint(1, 3)):
        in_context, by_name = exchanges(word)
        turns += in_context if rng.random() < 0.5 else by_name
    return turns


def _plural_game(rng: random.Random, a: str, b: str) -> list[str]:
    return _form_game(rng, ANIMALS + OBJECTS + FOODS + PLACES, lambda noun: (
        [f"{a}: I see one {noun}. What if there are two?", f"{b}: Then you see two {plural(noun)}."],
        [f"{a}: What is the plural of {noun}?", f"{b}: The plural of {noun} is {plural(noun)}."]))


def _past_game(rng: random.Random, a: str, b: str) -> list[str]:
    return _form_game(rng, ACTIVITIES + THING_ACTIONS + FOOD_ACTIONS, lambda verb: (
        [f"{a}: Today I {verb}. What about yesterday?", f"{b}: Yesterday you {past(verb)}."],
        [f"{a}: What is the past tense of {verb}?", f"{b}: The past tense of {verb} is {past(verb)}."]))


def _owner_game(rng: random.Random, a: str, b: str) -> list[str]:
    (c, _), (d, _) = rng.sample(NAMES, 2)
    things, colors = rng.sample(OBJECTS, 2), rng.sample(COLORS, 2)
    k, j = rng.randint(0, 1), rng.randint(0, 1)
    return [f"{a}: {c} has a {colors[0]} {things[0]} and {d} has a {colors[1]} {things[1]}. "
            f"Who has the {things[k]}?", f"{b}: {(c, d)[k]} has the {things[k]}.",
            f"{a}: What color is the {things[j]}?", f"{b}: The {things[j]} is {colors[j]}."]


LESSON_GAMES = [_word_game, _plural_game, _past_game, _owner_game]
# word games come up most: copying words out of the context is the skill the others build on
GAME_WEIGHTS = [3, 1, 1, 1]


def make_lesson(rng: random.Random) -> str:
    """One lesson: a teacher and a pupil play three to five word games, then say goodbye."""
    (a, _), (b, _) = rng.sample(NAMES, 2)
    turns = [f"{a}: Good {rng.choice(TIMES[:3])}, {b}! Let us play some word games.", f"{b}: Yes, please!"]
    for game in rng.choices(LESSON_GAMES, GAME_WEIGHTS, k=rng.randint(3, 5)):
        turns += game(rng, a, b)
    turns += [f"{a}: Well done, {b}!", f"{b}: Thank you, {a}!"]
    return use_an("\n".join(turns))


def lesson_probes(n: int, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """Lesson questions to put to a pretrained model: ``{"repeat": [(prompt, reply), ...], "who has": [...]}``.

    ``n`` probes of each game, cut from fresh lessons (``make_lesson``, so exactly the corpus's
    format): the prompt is the lesson up to the first "Say these words after me: ..." or "Who has
    the ...?" turn and the pupil's name after it, e.g. ``"...\nMara: Say these words after me: red
    fox.\nTolo:"``; the reply is the pupil's line (``"red fox."``). Earlier turns of the lesson are
    other games, so the context never holds an answer to the same question.
    """
    rng = random.Random(seed)
    probes: dict[str, list[tuple[str, str]]] = {"repeat": [], "who has": []}
    while min(len(found) for found in probes.values()) < n:
        turns = make_lesson(rng).split("\n")
        for k, turn in enumerate(turns[:-1]):
            game = "repeat" if "Say these words after me:" in turn else "who has" if "Who has the" in turn else None
            if game is not None:
                if len(probes[game]) < n:
                    pupil, reply = turns[k + 1].split(": ", 1)
                    probes[game].append(("\n".join(turns[:k + 1]) + f"\n{pupil}:", reply))
                break  # one probe per lesson, the first of its kind
    return probes


def make_document(rng: random.Random, p_story: float = 0.4, p_dialogue: float = 0.25) -> str:
    """A story with probability ``p_story``, a dialogue with ``p_dialogue``, else a lesson."""
    r = rng.random()
    if r < p_story:
        return make_story(rng)
    return make_dialogue(rng) if r < p_story + p_dialogue else make_lesson(rng)


SPLIT_SIZES = {"train": 30000, "validation": 500, "test": 500}


def make_corpus(seed: int = 0, sizes: dict | None = None) -> dict[str, list[str]]:
    """Generate ``{"train", "validation", "test"}`` lists of documents, disjoint between splits.

    The same ``seed`` and ``sizes`` always give the same documents.
    """
    sizes = split_sizes(sizes, SPLIT_SIZES, unit="documents")
    return distinct_documents(lambda rng, split: make_document(rng), sizes, seed)
