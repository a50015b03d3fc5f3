"""Generate imgq/imagenet_groups.json: ImageNet's 1000 classes in the groups people search by, from WordNet 3.0.

    python tools/wordnet_groups.py [--wordnet /usr/share/wordnet] [-o imgq/imagenet_groups.json] [--check]

ImageNet's class ids are WordNet 3.0 noun synsets: n02106166 is the synset at byte offset 02106166 of WordNet's
data.noun. Debian's ``wordnet-base`` package installs that file under /usr/share/wordnet (``apt-get install
wordnet-base``). This script reads it directly (no nltk) and, for each class of imgq/imagenet_class_index.json:

1. follows the hypernym pointers (``@``, and ``@i`` for instances) up to WordNet's root, every way they go (a
   synset can have two parents: WordNet is a graph, not a tree), giving every path from the root to the class;
2. keeps on each path only the synsets of KEEP below, in order, under their names here;
3. takes the longest of those kept paths (on a tie, the first in WordNet's pointer order): the class's groups.

KEEP is the curated part, and it is explicit on purpose: WordNet's levels are a taxonomist's ("physical
entity", "whole", "instrumentality", "artifact", "placental", "chordate"), and the groups worth a keyword are
the ones people type into a photo library's search box (animal, dog, cat, bird, car, food, ...). A synset not
in KEEP is dropped from every path. Two synsets may share a name (WordNet's two "food" senses); a name appears
once in a path. The names are ours (WordNet's "geological formation" is "landscape" here), chosen to read
as keywords. To change the groups: edit KEEP, run this script, commit the table; tests/test_groups.py checks
that the vendored table is what this script generates.

The table: ``{"source", "licence", "groups": {name: path ending with it}, "classes": {wnid: path}}``, groups in
KEEP's order; a class in no kept group is absent from "classes".
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASS_INDEX = os.path.join(REPO, "imgq", "imagenet_class_index.json")
TABLE = os.path.join(REPO, "imgq", "imagenet_groups.json")
WORDNET = "/usr/share/wordnet"

KEEP: tuple[tuple[str, str], ...] = (
    # (synset id, the group's name). Roughly general to specific; the order is the table's order of groups.
    # Left out on purpose besides the abstract levels: "mammal" and "primate" (a taxonomist's words, and on
    # the way of every dog's path), "sheepdog" (Border collie is animal|dog|Border collie, as people file it).
    # Living things
    ("n00007846", "person"),
    ("n00015388", "animal"),
    ("n02084071", "dog"),
    ("n02092468", "terrier"),
    ("n02087551", "hound"),
    ("n02099029", "retriever"),
    ("n02101108", "spaniel"),
    ("n02114100", "wolf"),
    ("n02118333", "fox"),
    ("n02121620", "cat"),
    ("n02127808", "big cat"),
    ("n02131653", "bear"),
    ("n02484322", "monkey"),
    ("n02470325", "ape"),
    ("n02329401", "rodent"),
    ("n02324045", "rabbit"),
    ("n02503517", "elephant"),
    ("n02062744", "whale"),
    ("n02374451", "horse"),
    ("n01503061", "bird"),
    ("n01604330", "bird of prey"),
    ("n01621127", "owl"),
    ("n01816887", "parrot"),
    ("n01846331", "duck"),
    ("n02512053", "fish"),
    ("n01482330", "shark"),
    ("n01661091", "reptile"),
    ("n01726692", "snake"),
    ("n01674464", "lizard"),
    ("n01662784", "turtle"),
    ("n01627424", "amphibian"),
    ("n01639765", "frog"),
    ("n02159955", "insect"),
    ("n02274259", "butterfly"),
    ("n02164464", "beetle"),
    ("n01772222", "spider"),
    ("n01974773", "crustacean"),
    ("n01976957", "crab"),
    ("n01940736", "mollusk"),
    ("n00017222", "plant"),
    ("n11669921", "flower"),
    ("n12992868", "fungus"),
    # Food
    ("n00021265", "food"),
    ("n07555863", "food"),
    ("n07705931", "fruit"),
    ("n07707451", "vegetable"),
    ("n07557434", "dish"),
    ("n07609840", "dessert"),
    ("n07622061", "baked goods"),
    ("n07881800", "drink"),
    # Vehicles
    ("n04524313", "vehicle"),
    ("n02686568", "aircraft"),
    ("n04530566", "boat"),
    ("n02858304", "boat"),
    ("n04194289", "ship"),
    ("n02958343", "car"),
    ("n04490091", "truck"),
    ("n02924116", "bus"),
    ("n04468005", "train"),
    ("n02834778", "bicycle"),
    # Places and structures
    ("n02913152", "building"),
    ("n03259505", "house"),
    ("n03953416", "place of worship"),
    ("n04202417", "shop"),
    ("n02898711", "bridge"),
    ("n03743902", "monument"),
    ("n03327234", "fence"),
    ("n09287968", "landscape"),
    # Things
    ("n03405725", "furniture"),
    ("n04161981", "seat"),
    ("n02818832", "bed"),
    ("n04379243", "table"),
    ("n03051540", "clothing"),
    ("n03380867", "footwear"),
    ("n03502509", "headwear"),
    ("n03800933", "musical instrument"),
    ("n04338517", "string instrument"),
    ("n04586932", "wind instrument"),
    ("n03915437", "percussion instrument"),
    ("n03614532", "keyboard instrument"),
    ("n04451818", "tool"),
    ("n04565375", "weapon"),
    ("n03467984", "gun"),
    ("n03094503", "container"),
    ("n02876657", "bottle"),
    ("n02883344", "box"),
    ("n02773037", "bag"),
    ("n03183080", "device"),
    ("n03699975", "machine"),
    ("n03278248", "electronics"),
    ("n03082979", "computer"),
    ("n04401088", "phone"),
    ("n04437953", "timepiece"),
    ("n02729837", "appliance"),
    ("n03733925", "measuring instrument"),
    ("n03852280", "optical instrument"),
    ("n03636248", "lamp"),
    ("n04516672", "utensil"),
    ("n04285146", "sports equipment"),
    ("n02778669", "ball"),
    ("n04447443", "toiletry"),
)


def read_hypernyms(wordnet: str) -> dict[str, list[str]]:
    """Synset id (``n`` + offset) -> its hypernyms' ids (``@`` and ``@i`` pointers to nouns), in the file's order.

    data.noun's lines (WordNet's wndb(5) format): ``offset lex_filenum ss_type w_cnt word lex_id [word lex_id...]
    p_cnt [ptr...] | gloss``, w_cnt in hex, each pointer ``symbol offset pos source/target``; the licence header
    lines start with two spaces."""
    parents: dict[str, list[str]] = {}
    with open(os.path.join(wordnet, "data.noun"), encoding="latin-1") as file:
        for line in file:
            if line.startswith("  "):
                continue
            fields = line.split(" | ", 1)[0].split()
            words = int(fields[3], 16)
            at = 4 + 2 * words
            pointers = int(fields[at])
            ids = []
            for n in range(pointers):
                symbol, offset, pos = fields[at + 1 + 4 * n: at + 4 + 4 * n]
                if symbol in ("@", "@i") and pos == "n":
                    ids.append("n" + offset)
            parents["n" + fields[0]] = ids
    return parents


def paths_to_root(synset: str, parents: dict[str, list[str]]) -> list[list[str]]:
    """Every path from WordNet's root down to ``synset`` (ending with it), in pointer order."""
    above = parents[synset]
    if not above:
        return [[synset]]
    return [path + [synset] for parent in above for path in paths_to_root(parent, parents)]


def groups_of(wnid: str, parents: dict[str, list[str]], keep: dict[str, str]) -> list[str]:
    """The class's groups, general first: its longest root path projected onto ``keep`` (see the module)."""
    best: list[str] = []
    for path in paths_to_root(wnid, parents):
        names: list[str] = []
        for synset in path[:-1]:  # the class itself is its label, not a group
            name = keep.get(synset)
            if name is not None and name not in names:
                names.append(name)
        if len(names) > len(best):
            best = names
    return best


def generate(wordnet: str = WORDNET, class_index: str = CLASS_INDEX) -> dict:
    """The table (see the module), from WordNet's files under ``wordnet``. Raises FileNotFoundError when they
    are not there, KeyError when a class or a KEEP id is not a synset of that WordNet."""
    parents = read_hypernyms(wordnet)
    keep = dict(KEEP)
    for synset, _ in KEEP:
        parents[synset]  # noqa: B018 (a KEEP id that is no synset is a typo: KeyError)
    with open(class_index, encoding="utf-8") as file:
        wnids = [wnid for wnid, _ in json.load(file).values()]
    classes = {wnid: groups_of(wnid, parents, keep) for wnid in wnids}
    group_paths: dict[str, list[str]] = {}
    for path in classes.values():
        for depth, name in enumerate(path):
            group_paths.setdefault(name, path[: depth + 1])
    order = list(dict.fromkeys(name for _, name in KEEP))
    return {
        "source": "WordNet 3.0 (Debian's wordnet-base, data.noun), through tools/wordnet_groups.py's KEEP list",
        "licence": "WORDNET_LICENSE",
        "groups": {name: group_paths[name] for name in order if name in group_paths},
        "classes": {wnid: path for wnid, path in classes.items() if path},
    }


def render(table: dict) -> str:
    """The table as the vendored file holds it: one group or class a line, so that a diff shows what moved."""
    lines = ["{", f'  "source": {json.dumps(table["source"])},', f'  "licence": {json.dumps(table["licence"])},',
             '  "groups": {']
    for key in ("groups", "classes"):
        items = [f"    {json.dumps(name)}: {json.dumps(path)}" for name, path in table[key].items()]
        lines.append(",\n".join(items))
        lines.append("  }," if key == "groups" else "  }")
        if key == "groups":
            lines.append('  "classes": {')
    lines.append("}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wordnet", default=WORDNET, help="the folder holding WordNet 3.0's data.noun")
    parser.add_argument("-o", "--output", default=TABLE)
    parser.add_argument("--check", action="store_true", help="exit 1 when the output file differs; write nothing")
    args = parser.parse_args(argv)
    try:
        text = render(generate(args.wordnet))
    except FileNotFoundError as exc:
        print(f"No WordNet at {args.wordnet} ({exc.strerror}): apt-get install wordnet-base", file=sys.stderr)
        return 2
    table = json.loads(text)
    unused = [name for _, name in KEEP if name not in table["groups"]]
    if args.check:
        with open(args.output, encoding="utf-8") as file:
            same = file.read() == text
        print("up to date" if same else f"{args.output} differs from what WordNet gives", file=sys.stderr)
        return 0 if same else 1
    with open(args.output, "w", encoding="utf-8") as file:
        file.write(text)
    print(f"{len(table['classes'])} of 1000 classes in {len(table['groups'])} groups -> {args.output}"
          + (f"; groups of no class: {', '.join(unused)}" if unused else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
