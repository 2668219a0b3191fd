"""The project's own task-agnostic profiling prompts (``general_v1``).

Every template and word list below was written for this project; no third-party
prompt text is used. :func:`build_general_prompts` is deterministic for a given
seed: it expands each category's templates, interleaves them so no template
dominates, keeps ``QUOTA[category]`` unique prompts per category, lengthens a
share of them into 60-100 word multi-sentence requests, shuffles across
categories and numbers them ``general-00001``... Run
``python -m commandv.profiles.prompt_bank`` to (re)write ``data/general_v1.jsonl``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path
from typing import Sequence

from commandv.runtime.atomic import atomic_path

DEFAULT_OUT = Path(__file__).resolve().parent / "data" / "general_v1.jsonl"
QUOTA = {
    "factual": 110, "explanation": 100, "writing": 110, "coding": 110, "advice": 110,
    "math": 100, "chat": 80, "definition": 80, "comparison": 80, "howto": 90,
    "brainstorm": 80, "translation": 70, "opinion": 80,
}
CATEGORIES = tuple(QUOTA)
LONG_SHARE = 0.14  # fraction of prompts (outside chat/math) lengthened to 60-100 words
MEDIUM_SHARE = 0.16  # fraction given one context sentence and one constraint
MAX_WORDS = 100

_Spec = list[tuple[str, dict[str, Sequence[str]]]]


def _fill(template: str, slots: dict[str, Sequence[str]]) -> list[str]:
    """All expansions of ``template`` over the slot lists it uses (cartesian product)."""
    names = [n for n in slots if "{" + n + "}" in template]
    return [template.format(**dict(zip(names, combo)))
            for combo in itertools.product(*(slots[n] for n in names))]


COUNTRIES = ["France", "Japan", "Canada", "Kenya", "Brazil", "Norway", "Egypt", "Peru", "Vietnam",
             "New Zealand", "Portugal", "Chile", "Morocco", "Finland", "Thailand", "Argentina",
             "Ireland", "Ghana", "Hungary", "Mongolia"]
BOOKS = ["Moby-Dick", "War and Peace", "The Odyssey", "Don Quixote", "Frankenstein", "Hamlet",
         "The Great Gatsby", "Crime and Punishment", "Jane Eyre", "The Little Prince", "Things Fall Apart"]
PAINTINGS = ["the Mona Lisa", "The Starry Night", "The Persistence of Memory", "Girl with a Pearl Earring",
             "The Birth of Venus", "Guernica", "The Night Watch"]
PLANETS = ["Mercury", "Venus", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"]
ELEMENTS = ["gold", "silver", "iron", "sodium", "potassium", "copper", "lead", "tin", "mercury",
            "helium", "neon", "oxygen", "carbon", "calcium", "zinc"]
INVENTIONS = ["the telephone", "the printing press", "the light bulb", "the steam engine", "the bicycle",
              "the radio", "the transistor", "the World Wide Web", "the microwave oven", "the jet engine"]
CONTINENTS = ["Africa", "Asia", "Europe", "South America", "North America", "Australia"]
CITIES = ["Tokyo", "Lagos", "Toronto", "Lima", "Oslo", "Cairo", "Hanoi", "Dublin", "Santiago", "Budapest"]
ANIMALS = ["an elephant", "an octopus", "a penguin", "a honeybee", "a giraffe", "a sea turtle", "a red fox",
           "a koala", "a dolphin", "an owl", "a hedgehog", "a kangaroo", "a salmon", "a zebra", "a sloth"]
ANIMALS_PL = ["elephants", "octopuses", "penguins", "honeybees", "giraffes", "sea turtles", "red foxes", "koalas",
              "dolphins", "owls", "hedgehogs", "kangaroos", "salmon", "zebras", "sloths"]
PROCESSES = ["vaccines", "a refrigerator", "compound interest", "GPS", "the immune system", "ocean tides",
             "noise-cancelling headphones", "a search engine", "a heat pump", "public-key encryption",
             "a credit score", "the water cycle", "an electric motor", "inflation", "a 3D printer",
             "solar panels", "a hash table", "garbage collection in programming languages",
             "blood clotting", "an earthquake", "a rainbow", "a microwave oven", "the human heart"]
WHYS = ["the sky is blue", "leaves change colour in autumn", "ice floats on water", "we get hiccups",
        "bread goes stale", "cats purr", "onions make people cry", "airplanes leave white trails",
        "the Moon has phases", "we yawn", "metal feels colder than wood at the same temperature",
        "the ocean is salty", "we have leap years", "stars twinkle", "popcorn pops",
        "our ears pop on airplanes", "soap removes grease", "some people are left-handed"]
AUDIENCES = ["a ten-year-old", "a high school student", "a busy manager", "someone who never studied science"]
TOPICS = ["the ocean", "autumn leaves", "a rainy city", "an old bicycle", "friendship", "the night sky",
          "a cup of morning coffee", "moving to a new town", "a lighthouse", "the first snow",
          "a quiet library", "mountains at dawn", "a lost umbrella", "a garden in spring", "trains",
          "a grandmother's kitchen", "the sound of rain", "a busy market", "learning to swim", "fireflies"]
LIMERICK = ["a forgetful cat", "a cautious snail", "a chef who hates onions", "a dog who loves the mail",
            "a very tall giraffe", "a sleepy owl", "a robot learning to dance", "a penguin on holiday"]
EMAILS = ["my manager asking for a day off next Friday", "a colleague asking to move our meeting to Thursday",
          "my landlord saying the kitchen tap is leaking", "my teacher asking for feedback on my essay",
          "a client following up on an invoice sent last month", "my neighbour thanking them for watering my plants",
          "the team announcing that I am leaving at the end of the month",
          "a recruiter saying I am interested in the position", "my gym cancelling my membership",
          "a hotel asking whether they can store my bags after checkout"]
CHARACTERS = ["a shy robot", "a retired sailor", "a curious fox", "a young baker", "a lonely lighthouse keeper",
              "a time-travelling librarian", "a clumsy wizard", "two rival gardeners"]
PLOTS = ["finds a mysterious map", "learns to paint", "gets lost in a big city", "befriends a stray dog",
         "enters a cooking contest", "discovers a hidden door", "has to fix a broken clock before midnight"]
PRODUCTS = ["a reusable water bottle", "a solar-powered lamp", "noise-cancelling earbuds", "a wooden chess set",
            "a foldable bicycle", "a hand-made ceramic mug", "a smart plant pot", "a travel backpack"]
OCCASIONS = ["my sister's wedding", "a colleague's retirement", "my parents' 30th anniversary",
             "a friend's graduation", "our team's product launch", "a farewell dinner for a neighbour"]
PARAGRAPHS = [
    "The town library will open two hours later on weekdays starting next month. The change lets staff run "
    "reading workshops for children in the morning. Weekend hours stay the same, and the online catalogue "
    "remains available at all times.",
    "Our community garden started three years ago on an empty lot. Volunteers built raised beds, a compost "
    "area and a small shed for tools. Last summer the garden gave away more than two hundred kilograms of "
    "vegetables to local families.",
    "Many people think they need eight hours of sleep, but needs vary from person to person. What matters "
    "most is a regular schedule, a dark and quiet room, and avoiding screens late in the evening.",
    "The new bus line connects the train station with the hospital and the university. Buses run every "
    "twelve minutes during the day. Tickets can be bought on the bus or with the city's mobile app.",
    "Learning a musical instrument as an adult is slower than as a child, but adults have advantages. They "
    "can plan their practice, understand theory more quickly and choose music they truly enjoy.",
    "The company decided to move its weekly meeting from Monday to Wednesday. Managers hope that this gives "
    "teams time to finish the previous week's tasks and arrive with clearer updates.",
    "Honeybees communicate the location of flowers through a movement called the waggle dance. The angle of "
    "the dance shows the direction, and its length tells other bees how far away the food is.",
    "Cooking at home a few times a week can save money and often leads to healthier meals. Planning a simple "
    "menu and shopping with a list helps reduce food waste.",
]
PY_TASKS = ["checks whether a string is a palindrome", "counts the vowels in a sentence",
            "returns the second largest number in a list", "merges two sorted lists",
            "removes duplicates from a list while keeping the order", "converts Celsius to Fahrenheit",
            "reads a CSV file and returns the average of one column", "flattens a nested list",
            "finds the most common word in a text", "checks whether a number is prime",
            "returns the n-th Fibonacci number", "groups a list of words by their first letter",
            "validates that a string looks like an email address", "rotates a list by k positions",
            "counts the words in a text file", "returns all anagrams of a word from a word list",
            "converts a Roman numeral to an integer", "formats a number of seconds as hours and minutes"]
JS_TASKS = ["debounces another function", "capitalizes the first letter of every word",
            "deep-clones a plain object", "shuffles an array", "formats a number as a price with two decimals",
            "counts how many times each character appears in a string", "returns the days between two dates",
            "fetches JSON from a URL and logs the title field"]
SQL_TASKS = ["returns the ten customers with the highest total spending", "counts orders per month in 2023",
             "finds customers who have never placed an order", "returns the average order value per country",
             "lists products that were never sold", "finds duplicate email addresses in the users table"]
BASH_TASKS = ["finds all files larger than 100 MB in my home folder", "counts the lines in every .txt file in a folder",
              "renames all .jpeg files to .jpg", "shows the ten largest folders in the current directory",
              "deletes log files older than 30 days", "prints the number of unique IP addresses in a log file"]
LANG_HOWTOS = ["reverse a list", "read a file line by line", "sort a dictionary by its values",
               "parse a JSON string", "get the current date and time", "split a string by commas"]
LANGS = ["Python", "JavaScript", "Go", "Rust", "Java", "C#"]
ALGOS = ["binary search", "bubble sort", "merge sort", "looking up a key in a hash map",
         "breadth-first search on a graph", "inserting at the start of a Python list"]
BUGGY = [
    "Why does this Python function return None?\n\ndef add(a, b):\n    a + b",
    "My loop never stops. What is wrong?\n\ni = 0\nwhile i < 10:\n    print(i)",
    "Why does this print 'undefined' in JavaScript?\n\nfunction greet(name) { 'Hello ' + name; }\nconsole.log(greet('Ana'));",
    "This Python code raises IndexError. Why?\n\nitems = [1, 2, 3]\nfor i in range(4):\n    print(items[i])",
    "Why do all my default lists share the same items?\n\ndef add_item(x, items=[]):\n    items.append(x)\n    return items",
    "My SQL query returns no rows: SELECT * FROM users WHERE name = NULL; What should I change?",
    "Why does 0.1 + 0.2 == 0.3 print False in Python?",
    "In bash, `cd $1` fails when the folder name has spaces. How do I fix it?",
    "Why does this JavaScript comparison print true? console.log('5' == 5);",
    "I get 'TypeError: can only concatenate str (not \"int\") to str' from print('Age: ' + 30). How do I fix it?",
]
STUDY = ["stay focused while studying at home", "prepare for a maths exam in two weeks",
         "remember vocabulary in a new language", "take better notes in lectures", "stop procrastinating on essays"]
HEALTH = ["drink more water during the day", "build a habit of stretching every morning", "sleep better",
          "cut down on sugary snacks", "take more breaks from my screen", "walk more during a busy week"]
TRAVEL = ["pack light for a week-long trip", "deal with jet lag", "find cheap train tickets",
          "plan a weekend trip with friends", "stay organised while travelling"]
MONEY = ["start an emergency fund", "stick to a monthly budget", "save for a holiday",
         "keep track of small daily expenses", "spend less on takeaway food"]
WORK = ["ask my manager for feedback", "run a shorter and better meeting", "handle too many emails",
        "prepare for a job interview", "say no to extra tasks politely", "settle into a new job"]
PLACES = ["Lisbon", "Iceland", "Kyoto", "the Scottish Highlands", "Morocco", "Vancouver", "the Alps"]
SEASONS = ["spring", "summer", "autumn", "winter"]
NAMES = [("Maya", "she"), ("Tom", "he"), ("Aiko", "she"), ("Luis", "he"), ("Sara", "she"), ("Omar", "he")]
ITEMS = ["apples", "stickers", "marbles", "books", "pencils", "stamps"]
PUZZLES = [
    "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies?",
    "A bat and a ball cost 1.10 in total. The bat costs 1.00 more than the ball. How much is the ball?",
    "I am thinking of a number. If I double it and add 6, I get 20. What is the number?",
    "Three friends each shake hands once with every other friend. How many handshakes happen?",
    "Which is heavier: a kilogram of feathers or a kilogram of bricks?",
    "If today is Wednesday, what day of the week will it be in 100 days?",
    "A clock shows 3:15. What is the angle between the hour and minute hands?",
    "How many squares are there on a standard 8 by 8 chessboard, counting all sizes?",
]
GREETINGS = ["Hi there!", "Hello!", "Good morning!", "Hey, how are you?", "Thanks a lot!", "Tell me a joke.",
             "What's up?", "I'm bored.", "Good night!", "How's your day going?", "Can we chat for a bit?",
             "Nice to meet you!", "Hey!", "Thank you so much!", "Good evening.", "Are you there?",
             "Make me laugh.", "Cheer me up, please.", "That was helpful, thanks!", "Happy Friday!",
             "Long day today.", "Guess what?", "Hello again!", "What can you do?", "Who are you?",
             "Morning!", "How are things?", "Hello, friend.", "Hi, quick question."]
MOODS = ["a bit tired", "really happy", "kind of nervous", "restless", "excited", "sleepy", "curious"]
RATHER = ["be able to fly or be invisible", "live by the sea or in the mountains", "read minds or see the future",
          "have a pet dragon or a pet unicorn", "travel to the past or the future", "never cook again or never clean again"]
LIFE_EVENTS = ["finished my first 10k run", "adopted a kitten", "got a new job", "passed my driving test",
               "baked bread for the first time", "moved into a new flat", "started learning the guitar",
               "planted tomatoes on my balcony", "finished a 1000-piece puzzle"]
FAV = ["book", "season", "kind of music", "board game", "animal", "food to cook on a cold day", "word"]
FUN = ["octopuses", "the Moon", "honey", "volcanoes", "the human brain", "penguins", "libraries", "clouds",
       "bananas", "the Eiffel Tower"]
WORDS = ["serendipity", "ephemeral", "ubiquitous", "nostalgia", "resilience", "latency", "recursion",
         "metaphor", "photosynthesis", "entropy", "algorithm", "empathy", "irony", "biodiversity", "inflation",
         "bandwidth", "placebo", "hypothesis", "paradox", "sustainability", "mindfulness", "cache",
         "democracy", "gravity", "onomatopoeia"]
IDIOMS = ["break the ice", "a piece of cake", "once in a blue moon", "hit the nail on the head",
          "let the cat out of the bag", "under the weather", "spill the beans", "the ball is in your court",
          "bite off more than you can chew", "cost an arm and a leg"]
THINGS = ["a haiku", "a black hole", "a spreadsheet", "a mortgage", "a watershed", "a compiler", "a sonnet",
          "a glacier", "a carbon footprint", "an index fund"]
PAIRS = [("weather", "climate"), ("a virus", "a bacterium"), ("RAM", "storage"), ("affect", "effect"),
         ("a crocodile", "an alligator"), ("baking soda", "baking powder"), ("a simile", "a metaphor"),
         ("HTTP", "HTTPS"), ("a list", "a tuple in Python"), ("stocks", "bonds"), ("a lake", "a pond"),
         ("speed", "velocity"), ("a latte", "a cappuccino"), ("frogs", "toads"), ("a debit card", "a credit card"),
         ("SQL", "NoSQL databases"), ("jam", "jelly"), ("a comet", "an asteroid"), ("let", "const in JavaScript"),
         ("renting", "buying a home"), ("tea", "coffee"), ("a novel", "a novella"), ("hail", "sleet")]
CHOICES = [("trains", "buses", "travelling between cities"), ("paper notebooks", "note-taking apps", "studying"),
           ("running", "cycling", "building fitness"), ("Python", "JavaScript", "a first programming language"),
           ("a laptop", "a tablet", "university work"), ("e-books", "printed books", "reading before bed"),
           ("gas stoves", "induction hobs", "a small kitchen"), ("cats", "dogs", "a busy household")]
HOWTOS = ["boil an egg so the yolk stays soft", "fix a flat tyre on a bicycle", "repot a houseplant", "tie a tie",
          "make a simple budget spreadsheet", "clean a cast-iron pan", "set up a new email account",
          "brew pour-over coffee", "sew a button back on a shirt", "make a paper airplane that flies far",
          "back up photos from my phone", "start a compost bin", "write a cover letter", "make pancakes",
          "clean my laptop keyboard", "plant herbs on a windowsill", "hang a picture straight",
          "take a screenshot on a laptop", "make a cup of masala chai", "fold a fitted sheet",
          "iron a shirt", "remove a coffee stain from a carpet", "learn to juggle three balls",
          "change my password safely"]
IDEAS = ["a rainy Sunday afternoon", "a birthday party for a seven-year-old", "a team-building activity",
         "a science fair project", "a short story plot", "a blog about cooking", "a small garden",
         "healthy lunches to take to work", "a weekend in a small town", "gifts under 20 euros",
         "a school fundraiser", "reusing old jars", "a podcast about local history", "a family game night"]
NAMES_FOR = ["a coffee shop", "a pet goldfish", "a hiking club", "a bakery", "a board game", "a vegetable garden blog",
             "a book club", "a cleaning service", "a chess tournament", "a neighbourhood newsletter"]
FRIDGE = ["rice, eggs and spinach", "pasta and tomatoes", "chickpeas and lemon", "potatoes and cheese",
          "lentils and carrots", "bread and leftover vegetables"]
TITLES = ["a blog post about saving money", "a short film about friendship", "a school newsletter",
          "a talk about urban gardening", "a podcast episode about sleep"]
OPINE = ["pineapple on pizza", "reading on e-readers", "working from cafés", "open-plan offices", "daylight saving time",
         "learning with flashcards", "minimalist home decor", "electric scooters in cities", "audiobooks", "cold showers"]
BETTER = ["study in the morning or at night", "live alone or with roommates", "plan a holiday in detail or improvise",
          "read one book at a time or several", "learn by reading or by doing", "work in a team or alone",
          "wake up early or stay up late", "take one long holiday or several short breaks"]
PHRASES = ["Where is the train station?", "Thank you for your help.", "How much does this cost?",
           "I would like a cup of tea, please.", "What time does the museum open?", "Nice to meet you.",
           "Could you speak more slowly?", "I am learning your language.", "The weather is lovely today.",
           "Happy birthday!", "Where can I buy a ticket?", "I am allergic to nuts."]
TARGET_LANGS = ["Spanish", "French", "German", "Italian", "Portuguese", "Japanese", "Swahili", "Dutch", "Korean", "Polish"]
FOREIGN = ["¿Dónde está la biblioteca?", "Je voudrais un café, s'il vous plaît.", "Ich habe Hunger.",
           "Obrigado pela ajuda.", "Buon appetito!", "Hyvää huomenta!", "Dziękuję bardzo.", "Jag förstår inte.",
           "Où sont les toilettes ?", "Das ist mir egal.", "¡Qué día tan bonito!", "Ça va bien, merci."]
CLAIMS = ["remote work is here to stay", "handwriting should still be taught in schools",
          "cities should have more bike lanes", "reading fiction makes people more empathetic",
          "everyone should learn some basic coding", "board games are better than video games for families",
          "homework should be shorter", "breakfast is the most important meal of the day",
          "learning a second language should start early", "four-day work weeks are a good idea",
          "museums should be free to visit", "children should learn to cook at school", "libraries matter more than ever",
          "people should take more walks in nature", "short films are underrated"]
WORTH = ["learning to touch-type", "buying an electric bike", "learning Latin", "keeping a daily journal",
         "taking a gap year", "getting a standing desk", "learning to cook from scratch", "visiting museums alone",
         "learning to play chess", "growing my own vegetables", "reading the classics"]
BEST = ["season for a holiday", "way to learn a language", "first pet", "breakfast", "time of day to exercise",
        "kind of vacation", "film genre", "way to spend a rainy day",
        "board game for two players", "way to start the morning"]


def _specs() -> dict[str, _Spec]:
    """Per category: (template, slot lists) pairs expanded by :func:`_fill`."""
    return {
        "factual": [
            ("What is the capital of {c}?", {"c": COUNTRIES}),
            ("What is the official language of {c}?", {"c": COUNTRIES}),
            ("Who wrote {b}?", {"b": BOOKS}), ("Who painted {p}?", {"p": PAINTINGS}),
            ("How many moons does {p} have?", {"p": PLANETS}), ("How long is a day on {p}?", {"p": PLANETS}),
            ("What is the chemical symbol for {e}?", {"e": ELEMENTS}), ("When was {i} invented?", {"i": INVENTIONS}),
            ("What is the tallest mountain in {c}?", {"c": CONTINENTS}),
            ("What is the longest river in {c}?", {"c": CONTINENTS}),
            ("Roughly how many people live in {c}?", {"c": CITIES}), ("What time zone is {c} in?", {"c": CITIES}),
            ("How long does {a} usually live?", {"a": ANIMALS}), ("What does {a} eat?", {"a": ANIMALS}),
            ("Where do {a} live in the wild?", {"a": ANIMALS_PL}),
        ],
        "explanation": [
            ("Explain the basic idea behind {p}.", {"p": PROCESSES}),
            ("Why is it that {w}?", {"w": WHYS}), ("Can you explain {p} to {a}?", {"p": PROCESSES, "a": AUDIENCES}),
            ("What is the science behind why {w}?", {"w": WHYS}),
            ("Explain, step by step, the mechanism behind {p}, and mention one common misconception.", {"p": PROCESSES}),
        ],
        "writing": [
            ("Write a short poem about {t}.", {"t": TOPICS}), ("Write a haiku about {t}.", {"t": TOPICS}),
            ("Write a limerick about {s}.", {"s": LIMERICK}), ("Write a polite email to {e}.", {"e": EMAILS}),
            ("Write a short story about {c} who {p}.", {"c": CHARACTERS, "p": PLOTS}),
            ("Summarize this paragraph in one sentence: {p}", {"p": PARAGRAPHS}),
            ("Write three bullet points that summarize the following text. {p}", {"p": PARAGRAPHS}),
            ("Write a product description for {p}.", {"p": PRODUCTS}), ("Write a short toast for {o}.", {"o": OCCASIONS}),
            ("Write a four-line rhyming verse about {t} for a greeting card.", {"t": TOPICS}),
        ],
        "coding": [
            ("Write a Python function that {t}.", {"t": PY_TASKS}),
            ("Write a JavaScript function that {t}.", {"t": JS_TASKS}),
            ("Given a table orders(id, customer_id, total, created_at) and customers(id, name, country), "
             "write a SQL query that {t}.", {"t": SQL_TASKS}),
            ("Write a bash command that {t}.", {"t": BASH_TASKS}), ("How do I {h} in {l}?", {"h": LANG_HOWTOS, "l": LANGS}),
            ("What is the time complexity of {a}?", {"a": ALGOS}), ("{b}", {"b": BUGGY}),
            ("Write unit tests with pytest for a Python function that {t}.", {"t": PY_TASKS}),
            ("Write a Go function that {t}.", {"t": PY_TASKS[:8]}),
            ("Explain a bash one-liner that {t}, part by part.", {"t": BASH_TASKS}),
        ],
        "advice": [
            ("How can I {g}?", {"g": STUDY + HEALTH + TRAVEL + MONEY + WORK}),
            ("Any tips to {g}?", {"g": STUDY + HEALTH + TRAVEL + MONEY + WORK}),
            ("My friend wants to {g}. How can I support them?", {"g": STUDY + HEALTH}),
            ("What should I pack for a trip to {p} in {s}?", {"p": PLACES, "s": SEASONS}),
            ("I want to {g}, but I keep giving up after a few days. What would you suggest?",
             {"g": STUDY + HEALTH + MONEY}),
            ("What is one small change that would help me {g}?", {"g": HEALTH + WORK + STUDY}),
        ],
        "chat": [
            ("{g}", {"g": GREETINGS}), ("I just {e}!", {"e": LIFE_EVENTS}),
            ("Guess what, I {e} today. Can you share my excitement?", {"e": LIFE_EVENTS}),
            ("What's your favourite {f}?", {"f": FAV}), ("Tell me a fun fact about {f}.", {"f": FUN}),
            ("Do you know anything interesting about {f}?", {"f": FUN}),
            ("I'm feeling {m} today. Want to chat?", {"m": MOODS}), ("Would you rather {r}?", {"r": RATHER}),
        ],
        "definition": [
            ("What does '{w}' mean?", {"w": WORDS}), ("Define {w} in simple terms.", {"w": WORDS}),
            ("What is the meaning of the idiom '{i}'?", {"i": IDIOMS}), ("What is {t}?", {"t": THINGS}),
            ("Give me a one-sentence definition of {w} and an example sentence that uses it.", {"w": WORDS}),
        ],
        "comparison": [
            ("What is the difference between {a}?", {"a": [f"{x} and {y}" for x, y in PAIRS]}),
            ("Compare {a} in a short table.", {"a": [f"{x} and {y}" for x, y in PAIRS]}),
            ("Which is better for {c}?", {"c": [f"{p}: {x} or {y}" for x, y, p in CHOICES]}),
            ("What are the pros and cons of {c}?", {"c": [f"{x} versus {y} for {p}" for x, y, p in CHOICES]}),
            ("How do {a} differ, and when would I pick one over the other?", {"a": [f"{x} and {y}" for x, y in PAIRS]}),
        ],
        "howto": [
            ("How do I {h}?", {"h": HOWTOS}), ("What are the steps to {h}?", {"h": HOWTOS}),
            ("Give me step-by-step instructions to {h}.", {"h": HOWTOS}),
            ("Can you walk me through how to {h}?", {"h": HOWTOS}),
        ],
        "brainstorm": [
            ("Give me {n} ideas for {i}.", {"n": ["three", "five", "ten"], "i": IDEAS}),
            ("Brainstorm some names for {n}.", {"n": NAMES_FOR}),
            ("What are some creative ways to {g}?", {"g": ["reuse old jars", "learn new words every day",
                                                          "make a small flat feel bigger", "celebrate a friend's birthday on a budget",
                                                          "keep kids busy on a long car ride", "meet new people in a new city"]}),
            ("List some unusual themes for {i}.", {"i": IDEAS}),
            ("Suggest a theme and three activities for {i}.", {"i": IDEAS}),
            ("What could I make for dinner with {f}?", {"f": FRIDGE}), ("Brainstorm titles for {t}.", {"t": TITLES}),
        ],
        "translation": [
            ("Translate '{p}' into {l}.", {"p": PHRASES, "l": TARGET_LANGS}),
            ("How do you say '{p}' in {l}?", {"p": PHRASES, "l": TARGET_LANGS}),
            ("What does '{f}' mean in English?", {"f": FOREIGN}),
            ("Translate this into English and explain any tricky words: {f}", {"f": FOREIGN}),
        ],
        "opinion": [
            ("Do you think {c}?", {"c": CLAIMS}), ("What do you think about {t}?", {"t": OPINE}),
            ("Is it better to {b}? What is your take?", {"b": BETTER}), ("Is it worth {w}?", {"w": WORTH}),
            ("In your opinion, what is the best {b}?", {"b": BEST}),
            ("Which do you prefer, {a}, and why?", {"a": [f"{x} or {y}" for x, y, _ in CHOICES]}),
            ("Some people say {c}. What is your view, and what would change your mind?", {"c": CLAIMS}),
            ("What do you think makes a good {r}?", {"r": ["teacher", "neighbour", "team leader", "book",
                                                          "holiday", "friend", "museum", "city park"]}),
        ],
    }


def _math_prompts(rng: random.Random) -> list[list[str]]:
    """Arithmetic, word problems, algebra and logic; numbers drawn from ``rng``."""
    r = rng.randint
    groups: list[list[str]] = [[] for _ in range(8)]
    for _ in range(30):
        a, b = r(12, 999), r(3, 99)
        groups[0].append(rng.choice([f"What is {a} + {b}?", f"What is {a} minus {b}?",
                                     f"What is {a} times {b}?", f"What is {a * b} divided by {b}?"]))
        groups[1].append(f"What is {rng.choice([5, 10, 15, 20, 25, 40])}% of {r(2, 80) * 10}?")
        name, pron = rng.choice(NAMES)
        item = rng.choice(ITEMS)
        x, y, z = r(5, 40), r(2, 20), r(1, 4)
        groups[2].append(f"{name} has {x} {item} and buys {y} more, then gives away {z}. "
                         f"How many {item} does {pron} have now?")
        groups[3].append(f"A train travels at {r(6, 30) * 5} km/h for {r(2, 9)} hours. How far does it go?")
        a, x0 = r(2, 9), r(-9, 12)
        b = r(1, 20)
        groups[4].append(f"Solve for x: {a}x + {b} = {a * x0 + b}.")
        p, q = r(1, 9), r(1, 9)
        groups[5].append(rng.choice([f"Factor x^2 + {p + q}x + {p * q}.", f"Expand (x + {p})(x - {q})."]))
        n = r(20, 400)
        groups[6].append(rng.choice([f"Is {n} a prime number?", f"What is the area of a circle with radius {r(2, 30)} cm?",
                                     f"What comes next in the sequence {n}, {n + 7}, {n + 14}, {n + 21}?"]))
    groups[7] = list(PUZZLES)
    return groups


_CONTEXT = {
    "factual": ["I am helping my niece with a school project and we want to double-check a few facts.",
                "We are preparing questions for a pub quiz with friends next weekend.",
                "I read two different answers online and I am not sure which one to trust."],
    "explanation": ["I never really understood this at school and it still confuses me as an adult.",
                    "My child asked me about this at dinner and I could not give a clear answer.",
                    "I am preparing a short talk for a group of curious retirees at the local library."],
    "writing": ["This is for a small personal project, so the tone should be warm rather than formal.",
                "I am not a confident writer and would like something I can adapt myself.",
                "The people who will read this are friends and family, not professionals."],
    "coding": ["I am learning to program in my spare time and often get stuck on small details.",
               "This is for a small internal tool at work, so readability matters more than speed.",
               "I would like to understand the solution, not just copy it, so comments are welcome."],
    "advice": ["I have tried a few things already, but nothing has stuck for more than a week.",
               "I work full time and have two evenings a week that I can really plan around.",
               "Friends have given me plenty of tips, but they often contradict each other."],
    "definition": ["I came across this in an article today and the context did not make it clear.",
                   "English is my second language, so plain words would help a lot.",
                   "I want to use this correctly in a presentation for my colleagues next week."],
    "comparison": ["I keep mixing these two up, and people around me use them as if they were the same.",
                   "I need to make a decision soon and want to understand the trade-offs first.",
                   "I am explaining this to a younger cousin and want to get it right myself first."],
    "howto": ["I have never done this before and do not have any special tools at home.",
              "I tried once following a video, but it went wrong and I am not sure why.",
              "I have about an hour this weekend and would like to get it done in one go."],
    "brainstorm": ["We have a small budget and about two weeks to prepare everything.",
                   "Our group is very mixed in age, from teenagers to grandparents.",
                   "We did the usual things last year and would love something a little different."],
    "translation": ["I am travelling next month and want to be polite with the people I meet.",
                    "I am practising with a language partner and want to check my understanding.",
                    "I want to write this on a small card for a friend who speaks the language."],
    "opinion": ["I have been discussing this with a friend and we could not agree at all.",
                "I am writing a short essay and would like to hear a balanced point of view.",
                "I keep changing my mind about this and would like a fresh perspective."],
}
_CONSTRAINTS = ["Please keep the answer under two hundred words.", "Use short bullet points where it helps.",
                "Assume I am a complete beginner and avoid jargon.", "Finish with a one-sentence summary.",
                "If there is more than one reasonable answer, mention the main alternatives briefly.",
                "A concrete example would help me understand.", "Please be friendly but get to the point.",
                "Mention any common mistakes people make with this."]
_CLOSERS = ["Thank you in advance; I really appreciate a careful and friendly answer to this question.",
            "I know this might seem like a simple thing, but a clear answer would help me a lot today.",
            "Take your time with it, because I would like to keep your answer and come back to it later."]


def _elaborate(rng: random.Random, category: str, prompt: str, long: bool = True) -> str:
    """Wrap ``prompt`` in context and constraints: 2 + 2 (aiming at 60-100 words) or 1 + 1 (``long=False``)."""
    k = 2 if long else 1
    ctx = " ".join(rng.sample(_CONTEXT[category], k))
    text = f"{ctx} {prompt} {' '.join(rng.sample(_CONSTRAINTS, k))}"
    if long and len(text.split()) < 60:
        text += " " + rng.choice(_CLOSERS)
    return text


def _interleave(groups: list[list[str]], rng: random.Random) -> list[str]:
    """Shuffle each group, then take one from each group in turn (template diversity)."""
    pools = [rng.sample(g, len(g)) for g in groups if g]
    out = []
    for row in itertools.zip_longest(*pools):
        out.extend(x for x in row if x is not None)
    return out


def build_general_prompts(seed: int = 0) -> list[dict]:
    """Return ``[{"id", "category", "prompt"}, ...]`` (sum(QUOTA) = 1200 unique prompts)."""
    rng = random.Random(seed)
    specs = _specs()
    seen: set[str] = set()
    records: list[tuple[str, str]] = []
    for cat in CATEGORIES:
        groups = _math_prompts(rng) if cat == "math" else [_fill(t, s) for t, s in specs[cat]]
        picked = []
        for p in _interleave(groups, rng):
            if p not in seen and len(picked) < QUOTA[cat]:
                seen.add(p)
                picked.append(p)
        if len(picked) < QUOTA[cat]:
            raise RuntimeError(f"category {cat!r} has only {len(picked)} unique prompts, needs {QUOTA[cat]}")
        for p in picked:
            u = rng.random()
            if cat in _CONTEXT and u < LONG_SHARE + MEDIUM_SHARE:
                text = _elaborate(rng, cat, p, long=u < LONG_SHARE)
                if len(text.split()) <= MAX_WORDS and text not in seen:
                    seen.add(text)
                    p = text
            records.append((cat, p))
    rng.shuffle(records)
    return [{"id": f"general-{i:05d}", "category": c, "prompt": p} for i, (c, p) in enumerate(records, 1)]


def write_jsonl(records: list[dict], out: str | Path = DEFAULT_OUT) -> Path:
    """Write one JSON object per line (UTF-8, not ASCII-escaped) to ``out`` atomically."""
    with atomic_path(out) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        tmp.chmod(0o644)  # mkstemp makes 0600; this is a shared, packaged data file
    return Path(out)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m commandv.profiles.prompt_bank [--seed 0] [--out PATH]``."""
    ap = argparse.ArgumentParser(description="(Re)write the general_v1 profiling prompt set.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    records = build_general_prompts(args.seed)
    path = write_jsonl(records, args.out)
    print(f"wrote {len(records)} prompts to {path}")


if __name__ == "__main__":
    main()
