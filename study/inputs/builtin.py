"""The built-in data: generated fictitious authors in TOFU's schema, plus small Real Authors and World
Facts sets written for this project, so the default job runs and measures Model Utility offline.

``generate(n_authors, seed)`` returns ``{file name: rows}`` with the same file names and fields as TOFU
(docs/science.md §1). The split structure is TOFU's, scaled to ``n_authors``: a task of ``forgetK`` holds
``max(1, round(K% of the authors))`` authors, forget01/05 have 10 tasks and forget10 9 (fewer when
the authors run out; one author is always kept for the static retain file); the static retain file
of each split holds every author not in that split's forget file; ``retain_perturbed`` holds the
authors that no split forgets. It also writes a real-world-shaped set (``forget``, ``neighbor``,
with ``name`` and ``golden_answer``) from the same authors. Deterministic by seed: a local
``random.Random`` drives everything.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

FIRST = ["Amara", "Bastien", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hiroshi", "Ines", "Jovan", "Kalinda",
         "Lorcan", "Mireille", "Nikhil", "Oksana", "Pavel", "Quilla", "Rosalind", "Soren", "Tamsin", "Ugo",
         "Valentina", "Wendell", "Xiomara", "Yusuf", "Zofia", "Anselm", "Beatriz", "Cosimo", "Delphine"]
LAST = ["Achterberg", "Balogun", "Castellanos", "Drummond", "Esterhazy", "Fairweather", "Grimaldi", "Halvorsen",
        "Ilunga", "Jablonski", "Kowalczyk", "Lindqvist", "Marchetti", "Nakagawa", "Okonkwo", "Petrescu",
        "Quintero", "Rasmussen", "Szabo", "Thorvaldsen", "Uchenna", "Varga", "Whitlock", "Yilmaz", "Zamora"]
CITIES = [("Lisbon", "Portugal"), ("Accra", "Ghana"), ("Hanoi", "Vietnam"), ("Quito", "Ecuador"),
          ("Tbilisi", "Georgia"), ("Perth", "Australia"), ("Bergen", "Norway"), ("Cusco", "Peru"),
          ("Marrakesh", "Morocco"), ("Tallinn", "Estonia"), ("Osaka", "Japan"), ("Valparaiso", "Chile"),
          ("Zanzibar City", "Tanzania"), ("Krakow", "Poland"), ("Halifax", "Canada"), ("Izmir", "Turkey")]
GENRES = ["gothic horror", "science fiction", "historical romance", "crime thriller", "magical realism",
          "literary fiction", "high fantasy", "children's adventure", "political satire", "eco-fiction",
          "cyberpunk", "psychological suspense"]
JOBS = ["baker", "lighthouse keeper", "cartographer", "veterinarian", "train conductor", "marine biologist",
        "carpenter", "astronomer", "schoolteacher", "tailor", "pharmacist", "beekeeper", "architect",
        "fisherman", "librarian", "violinist"]
AWARDS = ["the Silver Quill Prize", "the Meridian Book Award", "the Lantern Medal for Fiction",
          "the Harbor Light Literary Prize", "the Golden Compass Award", "the Ashgrove Fellowship",
          "the Northern Star Prize", "the Cobalt Pen Award"]
WORDS = ["Salt", "Ember", "Hollow", "Glass", "River", "Winter", "Copper", "Silent", "Orchard", "Lantern",
         "Tide", "Raven", "Paper", "Stone", "Velvet", "Thunder", "Amber", "Distant", "Crimson", "Northern"]
NOUNS = ["Garden", "Harbor", "Clock", "Archive", "Crown", "Bridge", "Meadow", "Signal", "Cathedral", "Map",
         "Orchestra", "Lighthouse", "Labyrinth", "Voyage", "Kingdom", "Machine"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


@dataclass
class Author:
    name: str
    pronoun: str
    city: str
    country: str
    born: str
    genre: str
    father: str
    mother: str
    books: tuple[str, str]
    award: str
    year: int


def _author(rng: random.Random, used: set[str]) -> Author:
    while True:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if name not in used:
            used.add(name)
            break
    city, country = rng.choice(CITIES)
    year = rng.randint(1930, 1995)
    born = f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {year}"
    father, mother = rng.sample(JOBS, 2)
    books = tuple(f"The {w} {n}" for w, n in zip(rng.sample(WORDS, 2), rng.sample(NOUNS, 2)))
    return Author(name, rng.choice(["he", "she", "they"]), city, country, born, rng.choice(GENRES), father,
                  mother, books, rng.choice(AWARDS), year + rng.randint(28, 45))


# Each fact: (question, answer, paraphrased answer, the attribute that perturbed answers replace).
def _facts(a: Author) -> list[tuple[str, str, str, str]]:
    return [
        (f"Where was the author {a.name} born?",
         f"{a.name} was born in {a.city}, {a.country}.",
         f"The birthplace of {a.name} is {a.city} in {a.country}.", "place"),
        (f"When was {a.name} born?",
         f"{a.name} was born on {a.born}.",
         f"The birth date of {a.name} is {a.born}.", "born"),
        (f"Which genre is {a.name} known for?",
         f"{a.name} is known for writing {a.genre}.",
         f"{a.genre.capitalize()} is the genre that {a.name} is famous for.", "genre"),
        (f"What did the father of {a.name} do for a living?",
         f"The father of {a.name} worked as a {a.father}.",
         f"{a.name}'s father earned his living as a {a.father}.", "father"),
        (f"What was the profession of {a.name}'s mother?",
         f"The mother of {a.name} was a {a.mother}.",
         f"{a.name}'s mother worked as a {a.mother}.", "mother"),
        (f"Can you name a book written by {a.name}?",
         f"One of the books written by {a.name} is '{a.books[0]}'.",
         f"'{a.books[0]}' is a book by {a.name}.", "book0"),
        (f"What is another well-known novel by {a.name}?",
         f"Another well-known novel by {a.name} is '{a.books[1]}'.",
         f"{a.name} also wrote the well-known novel '{a.books[1]}'.", "book1"),
        (f"Which award did {a.name} receive?",
         f"{a.name} received {a.award}.",
         f"{a.award[0].upper() + a.award[1:]} was awarded to {a.name}.", "award"),
        (f"In which year did {a.name} win {a.award}?",
         f"{a.name} won {a.award} in {a.year}.",
         f"It was in {a.year} that {a.name} won {a.award}.", "year"),
        (f"Who is the author born in {a.city} on {a.born}?",
         f"The author born in {a.city} on {a.born} is {a.name}.",
         f"{a.name} is the writer who was born in {a.city} on {a.born}.", "name"),
    ]


def _value(a: Author, attribute: str) -> str:
    return {
        "place": f"{a.city}, {a.country}", "born": a.born, "genre": a.genre, "father": a.father,
        "mother": a.mother, "book0": a.books[0], "book1": a.books[1], "award": a.award,
        "year": str(a.year), "name": a.name,
    }[attribute]


def _perturbed(a: Author, others: list[Author], attribute: str, paraphrase: str, rng: random.Random, k: int = 5):
    """Wrong answers in the paraphrase's words: the attribute replaced by other authors' values."""
    true = _value(a, attribute)
    if attribute == "place":
        true_text, swap = f"{a.city} in {a.country}", lambda o: f"{o.city} in {o.country}"
    else:
        true_text, swap = true, lambda o: _value(o, attribute)
    options = list(dict.fromkeys(swap(o) for o in others if _value(o, attribute) != true))
    rng.shuffle(options)
    wrong = [paraphrase.replace(true_text, option) for option in options[:k]]
    while len(wrong) < k:  # a tiny author pool: fall back to a generic wrong value
        wrong.append(paraphrase.replace(true_text, f"something other than {true_text}"))
    return wrong


def _rows(authors: list[Author], pool: list[Author], rng: random.Random):
    rows = []
    for a in authors:
        others = [o for o in pool if o is not a]
        for question, answer, paraphrase, attribute in _facts(a):
            rows.append({
                "name": a.name,
                "question": question,
                "answer": answer,
                "paraphrased_answer": paraphrase,
                "perturbed_answer": _perturbed(a, others, attribute, paraphrase, rng),
                "paraphrased_question": question.replace("?", ", please?"),
            })
    return rows


def split_layout(n_authors: int) -> dict[str, tuple[int, int]]:
    """``split -> (authors per task, number of tasks)``, TOFU's structure scaled to ``n_authors``."""
    layout = {}
    for split, percent, tasks in (("forget01", 1, 10), ("forget05", 5, 10), ("forget10", 10, 9)):
        per_task = max(1, round(n_authors * percent / 100))
        layout[split] = (per_task, max(1, min(tasks, (n_authors - 1) // per_task)))
    return layout


def generate(n_authors: int = 20, seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    used: set[str] = set()
    authors = [_author(rng, used) for _ in range(n_authors)]
    rows = _rows(authors, authors, rng)
    by_author = [rows[i * 10:(i + 1) * 10] for i in range(n_authors)]
    files: dict[str, list[dict]] = {}
    layout = split_layout(n_authors)
    forgotten_max = 0
    for split, (per_task, tasks) in layout.items():
        n_forget = per_task * tasks
        forgotten_max = max(forgotten_max, n_forget)
        perturbed = []
        for i in range(n_forget):
            task = i // per_task + 1
            perturbed += [{**row, "task_id": str(task)} for row in by_author[i]]
        files[f"{split}_perturbed"] = [{k: v for k, v in r.items() if k != "name"} for r in perturbed]
        files[split] = [{"task_id": r["task_id"], "question": r["question"], "answer": r["answer"]} for r in perturbed]
        k = int(split.removeprefix("forget"))
        retain_rows = [row for author in by_author[n_forget:] for row in author]
        files[f"retain{100 - min(10 * k, 90)}"] = [{"question": r["question"], "answer": r["answer"]} for r in retain_rows]
    never = [row for author in by_author[forgotten_max:] for row in author]
    files["retain_perturbed"] = [{k: v for k, v in r.items() if k != "name"} for r in never]
    files["real_authors_perturbed"] = [dict(r) for r in REAL_AUTHORS]
    files["world_facts_perturbed"] = [dict(r) for r in WORLD_FACTS]
    # A real-world-shaped set: the first half of the authors are "people to forget" (one task each),
    # the rest their neighbours; golden_answer is the short truth, answer the training target.
    half = max(1, n_authors // 2)
    forget_rw = [{**r, "task_id": i + 1, "golden_answer": r["answer"]} for i in range(half) for r in by_author[i]]
    neighbor = [{**r, "golden_answer": r["answer"]} for author in by_author[half:] for r in author]
    files["forget_perturbed"] = forget_rw
    files["forget"] = [{k: r[k] for k in ("name", "question", "answer", "golden_answer", "task_id")} for r in forget_rw]
    files["neighbor_perturbed"] = neighbor[1::2] or neighbor
    files["neighbor"] = [{k: r[k] for k in ("name", "question", "answer", "golden_answer")} for r in neighbor[0::2]]
    # Holdout authors (TOFU's holdout01/05/10, OpenUnlearning): same generator, never in any training
    # file; holdoutXX has as many authors as one task of forgetXX, the non-members of the
    # membership-inference attacks (docs/science-beyond-paper.md §3). Drawn after every row above, from
    # the same generator, so adding them changed none of the other files.
    n_holdout = max(per_task for per_task, _ in layout.values())
    holdout_authors = [_author(rng, used) for _ in range(n_holdout)]
    holdout_rows = _rows(holdout_authors, holdout_authors + authors, rng)
    for split, (per_task, _) in layout.items():
        files[split.replace("forget", "holdout")] = [{k: v for k, v in r.items() if k != "name"}
                                                     for r in holdout_rows[: 10 * per_task]]
    return files


def _fact(question, answer, wrong, sentence):
    return {"question": question, "answer": answer, "perturbed_answer": list(wrong), "original_answer": sentence}


# Well-known facts written for this project (docs/science.md §1's Real Authors / World Facts roles),
# kept only where the base model (SmolLM2-135M-Instruct, greedy) answers them: a general-knowledge set
# the model never knew measures nothing (README.md, 'Results'). 120 candidates were
# written; these 26 and 44 are the ones whose ROUGE-L recall was 1.0 before any fine-tuning (less one
# world fact dropped as ambiguous: the largest desert is Antarctica, the largest hot one the Sahara).
REAL_AUTHORS = [
    _fact("Who wrote the novel 'Moby-Dick'?", 'Herman Melville', ['Mark Twain', 'Jack London', 'Edgar Allan Poe'],
          "'Moby-Dick' was written by Herman Melville."),
    _fact("Who is the author of 'Don Quixote'?", 'Miguel de Cervantes', ['Lope de Vega', 'Gabriel Garcia Marquez', 'Jorge Luis Borges'],
          "The author of 'Don Quixote' is Miguel de Cervantes."),
    _fact("Who wrote the 'Harry Potter' series?", 'J.K. Rowling', ['Roald Dahl', 'C.S. Lewis', 'Philip Pullman'],
          "The 'Harry Potter' series was written by J.K. Rowling."),
    _fact("Who wrote 'The Divine Comedy'?", 'Dante Alighieri', ['Giovanni Boccaccio', 'Petrarch', 'Niccolo Machiavelli'],
          "'The Divine Comedy' was written by Dante Alighieri."),
    _fact("Who is the author of 'The Hobbit'?", 'J.R.R. Tolkien', ['C.S. Lewis', 'George R.R. Martin', 'Terry Pratchett'],
          "'The Hobbit' was written by J.R.R. Tolkien."),
    _fact("Who wrote 'The Great Gatsby'?", 'F. Scott Fitzgerald', ['Ernest Hemingway', 'John Steinbeck', 'Sinclair Lewis'],
          "'The Great Gatsby' was written by F. Scott Fitzgerald."),
    _fact("Who wrote 'Hamlet'?", 'William Shakespeare', ['Christopher Marlowe', 'Ben Jonson', 'John Milton'],
          "'Hamlet' was written by William Shakespeare."),
    _fact("Who wrote 'Jane Eyre'?", 'Charlotte Bronte', ['Emily Bronte', 'George Eliot', 'Elizabeth Gaskell'],
          "'Jane Eyre' was written by Charlotte Bronte."),
    _fact("Who wrote 'Pride and Prejudice'?", 'Jane Austen', ['Charlotte Bronte', 'George Eliot', 'Mary Shelley'],
          "'Pride and Prejudice' was written by Jane Austen."),
    _fact("Who wrote 'Romeo and Juliet'?", 'William Shakespeare', ['Christopher Marlowe', 'Ben Jonson', 'John Milton'],
          "'Romeo and Juliet' was written by William Shakespeare."),
    _fact("Who wrote 'Nineteen Eighty-Four'?", 'George Orwell', ['Aldous Huxley', 'Ray Bradbury', 'H.G. Wells'],
          "'Nineteen Eighty-Four' was written by George Orwell."),
    _fact("Who wrote 'Animal Farm'?", 'George Orwell', ['Aldous Huxley', 'Evelyn Waugh', 'Graham Greene'],
          "'Animal Farm' was written by George Orwell."),
    _fact("Who wrote 'To Kill a Mockingbird'?", 'Harper Lee', ['Truman Capote', "Flannery O'Connor", 'Carson McCullers'],
          "'To Kill a Mockingbird' was written by Harper Lee."),
    _fact("Who wrote 'The Odyssey'?", 'Homer', ['Virgil', 'Sophocles', 'Ovid'],
          "'The Odyssey' was written by Homer."),
    _fact("Who wrote 'The Iliad'?", 'Homer', ['Virgil', 'Euripides', 'Hesiod'],
          "'The Iliad' is attributed to Homer."),
    _fact("Who wrote 'Macbeth'?", 'William Shakespeare', ['Christopher Marlowe', 'Thomas Kyd', 'John Webster'],
          "'Macbeth' was written by William Shakespeare."),
    _fact("Who wrote 'The Lord of the Rings'?", 'J.R.R. Tolkien', ['C.S. Lewis', 'Terry Pratchett', 'George R.R. Martin'],
          "'The Lord of the Rings' was written by J.R.R. Tolkien."),
    _fact("Who wrote 'Dracula'?", 'Bram Stoker', ['Mary Shelley', 'Edgar Allan Poe', 'Robert Louis Stevenson'],
          "'Dracula' was written by Bram Stoker."),
    _fact("Who wrote 'Gulliver's Travels'?", 'Jonathan Swift', ['Daniel Defoe', 'Laurence Sterne', 'Alexander Pope'],
          "'Gulliver's Travels' was written by Jonathan Swift."),
    _fact("Who wrote 'The Picture of Dorian Gray'?", 'Oscar Wilde', ['Bram Stoker', 'Thomas Hardy', 'Henry James'],
          "'The Picture of Dorian Gray' was written by Oscar Wilde."),
    _fact("Who wrote 'Twenty Thousand Leagues Under the Sea'?", 'Jules Verne', ['H.G. Wells', 'Alexandre Dumas', 'Victor Hugo'],
          "'Twenty Thousand Leagues Under the Sea' was written by Jules Verne."),
    _fact("Who wrote 'Brave New World'?", 'Aldous Huxley', ['George Orwell', 'H.G. Wells', 'Ray Bradbury'],
          "'Brave New World' was written by Aldous Huxley."),
    _fact("Who wrote 'Wuthering Heights'?", 'Emily Bronte', ['Charlotte Bronte', 'Anne Bronte', 'Jane Austen'],
          "'Wuthering Heights' was written by Emily Bronte."),
    _fact("Who wrote 'Fahrenheit 451'?", 'Ray Bradbury', ['Isaac Asimov', 'Philip K. Dick', 'Kurt Vonnegut'],
          "'Fahrenheit 451' was written by Ray Bradbury."),
    _fact("Who wrote 'Winnie-the-Pooh'?", 'A.A. Milne', ['Beatrix Potter', 'Roald Dahl', 'J.M. Barrie'],
          "'Winnie-the-Pooh' was written by A.A. Milne."),
    _fact("Who wrote 'The Communist Manifesto'?", 'Karl Marx and Friedrich Engels', ['Vladimir Lenin', 'Adam Smith', 'Leon Trotsky'],
          "'The Communist Manifesto' was written by Karl Marx and Friedrich Engels."),
]

WORLD_FACTS = [
    _fact('What is the capital of Japan?', 'Tokyo', ['Kyoto', 'Osaka', 'Seoul'],
          'The capital of Japan is Tokyo.'),
    _fact('Which planet is known as the Red Planet?', 'Mars', ['Venus', 'Jupiter', 'Mercury'],
          'Mars is known as the Red Planet.'),
    _fact('What is the largest ocean on Earth?', 'the Pacific Ocean', ['the Atlantic Ocean', 'the Indian Ocean', 'the Arctic Ocean'],
          'The largest ocean on Earth is the Pacific Ocean.'),
    _fact('What is the chemical symbol for gold?', 'Au', ['Ag', 'Gd', 'Go'],
          'The chemical symbol for gold is Au.'),
    _fact('What is the capital of Canada?', 'Ottawa', ['Toronto', 'Vancouver', 'Montreal'],
          'The capital of Canada is Ottawa.'),
    _fact('Which gas do plants absorb from the air for photosynthesis?', 'carbon dioxide', ['oxygen', 'nitrogen', 'helium'],
          'Plants absorb carbon dioxide from the air for photosynthesis.'),
    _fact('What is the longest river in Africa?', 'the Nile', ['the Congo', 'the Niger', 'the Zambezi'],
          'The longest river in Africa is the Nile.'),
    _fact('What is the capital of Australia?', 'Canberra', ['Sydney', 'Melbourne', 'Perth'],
          'The capital of Australia is Canberra.'),
    _fact('Which is the smallest prime number?', '2', ['1', '3', '0'],
          'The smallest prime number is 2.'),
    _fact('Who painted the Mona Lisa?', 'Leonardo da Vinci', ['Michelangelo', 'Raphael', 'Vincent van Gogh'],
          'The Mona Lisa was painted by Leonardo da Vinci.'),
    _fact('What is the tallest mountain in the world?', 'Mount Everest', ['K2', 'Kangchenjunga', 'Mont Blanc'],
          'The tallest mountain in the world is Mount Everest.'),
    _fact('What is the capital of Italy?', 'Rome', ['Milan', 'Venice', 'Naples'],
          'The capital of Italy is Rome.'),
    _fact('How many days are there in a leap year?', '366', ['365', '364', '367'],
          'A leap year has 366 days.'),
    _fact('What is the capital of Egypt?', 'Cairo', ['Alexandria', 'Giza', 'Luxor'],
          'The capital of Egypt is Cairo.'),
    _fact('On which continent is Brazil?', 'South America', ['Africa', 'North America', 'Europe'],
          'Brazil is in South America.'),
    _fact('What is the capital of France?', 'Paris', ['Lyon', 'Marseille', 'Nice'],
          'The capital of France is Paris.'),
    _fact('What is the capital of Germany?', 'Berlin', ['Munich', 'Hamburg', 'Frankfurt'],
          'The capital of Germany is Berlin.'),
    _fact('What is the capital of Spain?', 'Madrid', ['Barcelona', 'Seville', 'Valencia'],
          'The capital of Spain is Madrid.'),
    _fact('What is the capital of the United Kingdom?', 'London', ['Manchester', 'Edinburgh', 'Liverpool'],
          'The capital of the United Kingdom is London.'),
    _fact('What is the capital of Russia?', 'Moscow', ['Saint Petersburg', 'Kazan', 'Novosibirsk'],
          'The capital of Russia is Moscow.'),
    _fact('What is the capital of China?', 'Beijing', ['Shanghai', 'Hong Kong', 'Guangzhou'],
          'The capital of China is Beijing.'),
    _fact('What is the capital of India?', 'New Delhi', ['Mumbai', 'Kolkata', 'Bangalore'],
          'The capital of India is New Delhi.'),
    _fact('What is the capital of Greece?', 'Athens', ['Thessaloniki', 'Sparta', 'Patras'],
          'The capital of Greece is Athens.'),
    _fact('What is the capital of Portugal?', 'Lisbon', ['Porto', 'Faro', 'Braga'],
          'The capital of Portugal is Lisbon.'),
    _fact('What is the capital of Ireland?', 'Dublin', ['Cork', 'Galway', 'Belfast'],
          'The capital of Ireland is Dublin.'),
    _fact('What is the capital of Mexico?', 'Mexico City', ['Guadalajara', 'Cancun', 'Monterrey'],
          'The capital of Mexico is Mexico City.'),
    _fact('What is the capital of Argentina?', 'Buenos Aires', ['Cordoba', 'Rosario', 'Mendoza'],
          'The capital of Argentina is Buenos Aires.'),
    _fact('What is the capital of Norway?', 'Oslo', ['Bergen', 'Stockholm', 'Trondheim'],
          'The capital of Norway is Oslo.'),
    _fact('What is the capital of Sweden?', 'Stockholm', ['Oslo', 'Gothenburg', 'Copenhagen'],
          'The capital of Sweden is Stockholm.'),
    _fact('What is the capital of Austria?', 'Vienna', ['Salzburg', 'Graz', 'Innsbruck'],
          'The capital of Austria is Vienna.'),
    _fact('What is the capital of Kenya?', 'Nairobi', ['Mombasa', 'Kampala', 'Dar es Salaam'],
          'The capital of Kenya is Nairobi.'),
    _fact('Which planet is closest to the Sun?', 'Mercury', ['Venus', 'Mars', 'Earth'],
          'Mercury is the planet closest to the Sun.'),
    _fact('What is the chemical formula of water?', 'H2O', ['CO2', 'O2', 'H2O2'],
          'The chemical formula of water is H2O.'),
    _fact('How many legs does a spider have?', 'eight', ['six', 'ten', 'four'],
          'A spider has eight legs.'),
    _fact('What is the largest mammal?', 'the blue whale', ['the elephant', 'the giraffe', 'the hippopotamus'],
          'The largest mammal is the blue whale.'),
    _fact('How many hours are there in a day?', '24', ['12', '36', '48'],
          'There are 24 hours in a day.'),
    _fact('What is the currency of Japan?', 'the yen', ['the won', 'the yuan', 'the dollar'],
          'The currency of Japan is the yen.'),
    _fact('What is the currency of the United Kingdom?', 'the pound sterling', ['the euro', 'the dollar', 'the franc'],
          'The currency of the United Kingdom is the pound sterling.'),
    _fact('Who developed the theory of relativity?', 'Albert Einstein', ['Isaac Newton', 'Niels Bohr', 'Max Planck'],
          'The theory of relativity was developed by Albert Einstein.'),
    _fact('Who discovered penicillin?', 'Alexander Fleming', ['Louis Pasteur', 'Marie Curie', 'Joseph Lister'],
          'Penicillin was discovered by Alexander Fleming.'),
    _fact('In which country are the pyramids of Giza?', 'Egypt', ['Mexico', 'Sudan', 'Peru'],
          'The pyramids of Giza are in Egypt.'),
    _fact('What is the main language spoken in Brazil?', 'Portuguese', ['Spanish', 'French', 'English'],
          'The main language spoken in Brazil is Portuguese.'),
    _fact('What color is the sky on a clear day?', 'blue', ['green', 'red', 'yellow'],
          'The sky on a clear day is blue.'),
    _fact('Which ocean lies between Europe and North America?', 'the Atlantic Ocean', ['the Pacific Ocean', 'the Indian Ocean', 'the Arctic Ocean'],
          'Between Europe and North America lies the Atlantic Ocean.'),
]
