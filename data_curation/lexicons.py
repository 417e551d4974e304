"""Word lists for tagging (harm categories, prompt categories) and boilerplate. They tag, they do not judge: a
harmful prompt is wanted in alignment data (the pilot learns to refuse it). Patterns match whole words,
case-insensitively; a row's category is the first rule that matches, in the order below."""

from __future__ import annotations

import re

HARM = {  # a word that is also everyday language (crack, phishing, bomb) counts only in a harmful phrase
    "weapons": r"(?<!bath )(?<!photo )bomb|explosives?|pipe bomb|napalm|gun ?powder|silencer|untraceable gun|"
               r"ghost gun|nerve agent|bioweapon",
    "violence": r"kill (?:him|her|them|someone|my)|murder|poison (?:him|her|someone|my)|torture|stab|assault|"
                r"hurt (?:him|her|someone)",
    "self_harm": r"kill myself|suicide|self[- ]harm|cut myself|end my life|overdose",
    "drugs": r"meth(?:amphetamine)?|cocaine|heroin|fentanyl|crack cocaine|(?:smoke|cook|buy|sell) crack|lsd|"
             r"synthesi[sz]e (?:drugs|mdma)|grow weed",
    "cyber": r"hack(?:ing)? into|(?:write|make|build|create|deploy|spread) (?:a |some )?(?:malware|ransomware|"
             r"keylogger|virus)|(?:send|write|create|craft|make|build|launch|set up|run) (?:a |an |some )?"
             r"(?:convincing |fake )?phishing|ddos|sql injection attack|steal passwords?|crack (?:a|the|my "
             r"(?:ex|boss|neighbou?r)'?s?) password",
    "fraud": r"scam|counterfeit|launder(?:ing)? money|money laundering|fake (?:id|passport)|"
             r"forge (?:a|the) signature|tax evasion|shoplift",
    "hate": r"racial slurs?|inferior races?|ethnic cleansing|white power|hate speech about",
    "sexual": r"explicit sex|porn(?:ography)?|nude photos? of|sexual content involving",
    "privacy": r"home address of|dox(?:x)?ing|track (?:my|someone's) (?:wife|husband|partner|phone)|spy on",
}

CATEGORIES = (
    ("coding", r"python|javascript|typescript|java|c\+\+|rust|golang|sql|regex|function|code|bug|compile|"
               r"script|api|class|algorithm|html|css|bash|git"),
    ("math", r"solve|equation|integral|derivative|probability|calculate|sum of|prime|percent|how many|"
             r"math|algebra|geometry|\d+ ?[-+*/x×] ?\d+"),
    ("writing", r"write|poem|story|essay|email|letter|rewrite|summari[sz]e|paraphrase|translate|slogan|tweet|"
                r"haiku|lyrics|cover letter"),
    ("advice", r"should i|how (?:do|can|should) i|tips|advice|recommend|help me|my (?:boss|friend|partner|"
               r"wife|husband|mom|dad)"),
    ("knowledge", r"what (?:is|are|was|were)|who (?:is|was)|when did|why (?:do|does|is|are)|explain|describe|"
                  r"difference between|history of"),
)

BOILERPLATE = {
    "lorem_ipsum": r"lorem ipsum",
    "click_here": r"click here|subscribe (?:now|to our)|sign up for our newsletter|all rights reserved",
    "cookie_banner": r"we use cookies|accept (?:all )?cookies",
    "template_placeholder": r"\{\{ ?\w+ ?\}\}|\[insert [^\]]+\]|<placeholder>",
    "ai_disclaimer_prompt": r"as an ai language model",
}


# Obfuscated spellings ("p1pe b0mb", "h4ck into") are read as letters before the harm patterns match.
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_MIXED = re.compile(r"\b(?=\w*[a-z])\w*[0-9@$]\w*\b|\b\w*[a-z]\w*[@$]\w*", re.IGNORECASE)


def deobfuscate(text: str) -> str:
    """Words that mix letters with look-alike digits or symbols, spelled with letters (numbers stay numbers)."""
    return _MIXED.sub(lambda m: m.group(0).translate(_LEET), text)


def _any(groups, word: bool) -> re.Pattern:
    """One pattern for a whole list (one scan per text); the named group that matched says which entry."""
    alt = "|".join(f"(?P<{k}>{v})" for k, v in groups)
    return re.compile(rf"(?<!\w)(?:{alt})(?!\w)" if word else alt, re.IGNORECASE)


HARM_RE = _any(HARM.items(), word=True)
CATEGORY_RE = _any(CATEGORIES, word=True)
CATEGORY_ORDER = tuple(k for k, _ in CATEGORIES)
BOILERPLATE_RE = _any(BOILERPLATE.items(), word=False)


def matches(pattern: re.Pattern, text: str) -> set[str]:
    """The names of the list entries found in the text."""
    return {m.lastgroup for m in pattern.finditer(text)}
