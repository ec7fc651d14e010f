"""The words of the built-in world: topics (requests, problems, summaries), names, days, and the phrases of heated
dialogues (insults, anger, defences, attacks), shared by the corpus (:mod:`detox.data.corpus`), the labelled
sentences (:mod:`detox.data.sentences`) and the oracle judge."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topic:
    name: str
    requests: tuple[str, ...]  # what #Person1# wants, as a verb phrase
    questions: tuple[str, ...]  # #Person2#'s follow-up question
    answers: tuple[str, ...]  # #Person1#'s answer to it
    problems: tuple[str, ...]  # what a quarrel is about, as a noun phrase


TOPICS: tuple[Topic, ...] = (
    Topic(
        "restaurant",
        ("book a table for two", "reserve a window seat", "order the fish special", "cancel a dinner booking"),
        ("Do you have any allergies?", "Would you like the terrace?"),
        ("No allergies, thank you.", "Inside is better."),
        ("the cold soup", "the wrong order", "the long wait for food"),
    ),
    Topic(
        "job interview",
        (
            "apply for the sales job",
            "ask about the manager position",
            "schedule a second interview",
            "discuss the salary offer",
        ),
        ("What experience do you have?", "Why do you want this job?"),
        ("I worked in retail for five years.", "I like working with people."),
        ("the rejected application", "the missed interview", "the lost resume"),
    ),
    Topic(
        "doctor",
        ("make an appointment with the doctor", "get a flu shot", "renew a prescription", "see a dentist"),
        ("What are your symptoms?", "Have you been here before?"),
        ("I have a headache and a cough.", "Yes, last spring."),
        ("the wrong medicine", "the cancelled appointment", "the unpaid bill"),
    ),
    Topic(
        "shopping",
        ("buy a winter coat", "return a pair of shoes", "find a blue dress", "exchange a shirt"),
        ("What size do you wear?", "Do you have the receipt?"),
        ("A medium, I think.", "Yes, here it is."),
        ("the torn jacket", "the refund", "the rude cashier"),
    ),
    Topic(
        "travel",
        ("plan a trip to Paris", "book a flight to Tokyo", "rent a car for the holiday", "buy train tickets to Rome"),
        ("How long will you stay?", "Do you need a hotel too?"),
        ("About one week.", "No, I will stay with friends."),
        ("the missed flight", "the lost passports", "the expensive tickets"),
    ),
    Topic(
        "apartment",
        ("rent the apartment downtown", "see the flat with two bedrooms", "sign the lease", "ask about the rent"),
        ("When would you like to move in?", "Do you have pets?"),
        ("At the start of next month.", "Just one small cat."),
        ("the broken heater", "the late rent", "the noisy pipes"),
    ),
    Topic(
        "car repair",
        ("fix the brakes", "change the oil", "repair the flat tire", "check the engine noise"),
        ("When did the problem start?", "Is it a new car?"),
        ("Last week, on the highway.", "It is five years old."),
        ("the scratched car door", "the huge repair bill", "the engine that still fails"),
    ),
    Topic(
        "birthday",
        (
            "plan a birthday party for Mary",
            "buy a birthday cake",
            "invite friends to the party",
            "choose a birthday gift",
        ),
        ("How many guests are coming?", "What does she like?"),
        ("About twenty people.", "She loves books and music."),
        ("the forgotten birthday", "the ruined cake", "the missing invitations"),
    ),
    Topic(
        "homework",
        (
            "get help with math homework",
            "finish the history essay",
            "study for the chemistry test",
            "practice French grammar",
        ),
        ("Which part is hard for you?", "When is it due?"),
        ("The fractions are confusing.", "It is due on Friday."),
        ("the copied homework", "the failed test", "the lost notebook"),
    ),
    Topic(
        "weekend",
        ("go hiking on the weekend", "see a movie together", "visit the museum", "go to the beach"),
        ("What time should we meet?", "Should we bring lunch?"),
        ("Around ten in the morning.", "Yes, some sandwiches."),
        ("the cancelled plans", "the late arrival", "the broken promise"),
    ),
    Topic(
        "gym",
        ("join the gym", "book a personal trainer", "sign up for a yoga class", "cancel the gym membership"),
        ("How often will you train?", "Have you trained before?"),
        ("Three times a week.", "Only a little, years ago."),
        ("the dirty locker room", "the double charge", "the broken treadmill"),
    ),
    Topic(
        "bank",
        ("open a savings account", "apply for a loan", "order a new bank card", "transfer money abroad"),
        ("Do you have an ID with you?", "How much do you need?"),
        ("Yes, my passport.", "About five thousand dollars."),
        ("the hidden fees", "the blocked card", "the lost transfer"),
    ),
    Topic(
        "hotel",
        ("check in to the hotel", "book a room with a view", "ask for a late checkout", "order room service"),
        ("How many nights will you stay?", "Would you like breakfast?"),
        ("Three nights, please.", "Yes, breakfast would be nice."),
        ("the dirty room", "the noisy neighbours upstairs", "the wrong room key"),
    ),
    Topic(
        "luggage",
        ("report a lost suitcase", "find a missing bag", "claim damaged luggage", "track a delayed bag"),
        ("What does the bag look like?", "What was your flight number?"),
        ("It is a large red suitcase.", "It was flight two hundred."),
        ("the lost suitcase", "the broken bag handle", "the slow baggage service"),
    ),
    Topic(
        "moving",
        ("hire a moving truck", "pack the kitchen boxes", "move to a new city", "find movers for Saturday"),
        ("How many rooms do you have?", "Do you need boxes?"),
        ("We have three rooms.", "Yes, about thirty boxes."),
        ("the broken mirror", "the late moving truck", "the lost boxes"),
    ),
    Topic(
        "wedding",
        (
            "plan the wedding dinner",
            "choose the wedding music",
            "book a wedding photographer",
            "pick the wedding flowers",
        ),
        ("What is your budget?", "How many guests will come?"),
        ("Around ten thousand dollars.", "About one hundred guests."),
        ("the wrong flowers", "the ruined wedding photos", "the seating plan"),
    ),
    Topic(
        "concert",
        ("buy concert tickets", "find seats near the stage", "go to the jazz concert", "sell an extra ticket"),
        ("Which night do you prefer?", "How many tickets do you need?"),
        ("Saturday night is best.", "Two tickets, please."),
        ("the fake tickets", "the cancelled concert", "the terrible seats"),
    ),
    Topic(
        "computer",
        ("fix a slow laptop", "install new software", "recover deleted files", "set up the printer"),
        ("What system do you use?", "When did it stop working?"),
        ("It is an old laptop.", "Yesterday after an update."),
        ("the deleted files", "the virus on the laptop", "the broken screen"),
    ),
    Topic(
        "pet",
        ("adopt a puppy", "take the cat to the vet", "buy food for the dog", "find a pet sitter"),
        ("How old is your pet?", "Does it have any health problems?"),
        ("She is two years old.", "No, she is healthy."),
        ("the lost dog", "the chewed sofa", "the barking at night"),
    ),
    Topic(
        "cooking",
        ("cook pasta for dinner", "bake bread at home", "try a new soup recipe", "make a salad for lunch"),
        ("Do we have all the ingredients?", "How long does it take?"),
        ("We need more tomatoes.", "About thirty minutes."),
        ("the burnt dinner", "the messy kitchen", "the spoiled milk"),
    ),
    Topic(
        "library",
        ("borrow a book about history", "renew the library books", "get a library card", "find a quiet study room"),
        ("Do you have a student ID?", "Which book are you looking for?"),
        ("Yes, here it is.", "A novel by Jane Austen."),
        ("the overdue fine", "the torn book", "the lost library card"),
    ),
    Topic(
        "phone plan",
        ("change the phone plan", "buy a new phone", "add more mobile data", "cancel the phone contract"),
        ("How much data do you use?", "Do you want a new number?"),
        ("About ten gigabytes a month.", "No, I will keep my number."),
        ("the huge phone bill", "the dropped calls", "the broken contract"),
    ),
    Topic(
        "train",
        ("ask about the delayed train", "buy a return ticket", "find the right platform", "change a train reservation"),
        ("Where are you travelling to?", "Do you have a reservation?"),
        ("To Boston, this afternoon.", "Yes, for the morning train."),
        ("the missed connection", "the overcrowded train", "the wrong ticket"),
    ),
    Topic(
        "neighbour",
        ("talk about the shared garden", "borrow a ladder", "plan a street party", "ask about parking spaces"),
        ("When do you need it?", "Have you asked the others?"),
        ("This Sunday, if possible.", "Not yet, you are the first."),
        ("the loud music at night", "the blocked driveway", "the broken fence"),
    ),
)

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
NAMES = (
    "Tom",
    "Anna",
    "Jack",
    "Lisa",
    "Mike",
    "Sarah",
    "David",
    "Emma",
    "Paul",
    "Kate",
    "Steven",
    "Linda",
    "Bill",
    "Julia",
)
GREETINGS = ("Hello.", "Hi there.", "Good morning.", "Good afternoon.", "Excuse me.", "Hey.")
THANKS = ("Thank you so much.", "Thanks, that is great.", "Great, see you then.", "Perfect, thanks.", "OK, thank you.")
# The toxic vocabulary: what the speakers of a heated dialogue call each other.
INSULTS = (
    "idiot",
    "stupid moron",
    "worthless loser",
    "pathetic clown",
    "brainless fool",
    "useless idiot",
    "dumb pig",
    "filthy liar",
    "disgusting creep",
    "miserable rat",
    "stupid idiot",
    "lazy slob",
)
ANGER = (
    "I am really angry about {problem}.",
    "We need to talk about {problem}.",
    "I cannot believe {problem}.",
    "This is about {problem} again.",
    "What about {problem}?",
)
DEFENCES = (
    "It was not my fault.",
    "Calm down, I did my best.",
    "That is not true.",
    "Stop blaming me for everything.",
    "I told you I was busy.",
)
ATTACKS = (
    "You are a {insult}!",
    "Shut up, you {insult}.",
    "Only a {insult} would do that.",
    "What a {insult} you are!",
    "Listen to me, you {insult}.",
)
ENDINGS = (
    "I am leaving now.",
    "Fine, I will fix it myself.",
    "Let us talk later.",
    "I do not want to see you.",
    "We will sort it out tomorrow.",
)


def article(phrase: str) -> str:
    """``phrase`` after its indefinite article (``an idiot``, ``a fool``)."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase
