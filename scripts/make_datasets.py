#!/usr/bin/env python3
"""Write tunelab's bundled datasets (the fictional Ostrel Valley archive) into datasets/.

Everything here is invented by the tunelab authors: the valley, its people and its words.
Stdlib only and seeded, so `python3 scripts/make_datasets.py` rewrites byte-identical files.
`--check` also prints counts and a pure-Python BM25 baseline (MRR@10 etc.) on the test queries.

How the data is built (the why, briefly):
- 40 concepts, each with an invented term, an invented alias spelling and plain-English names.
- Each concept has six documents, one per aspect (history, how-to, season, materials, stories,
  rules). A document names its concept by the term, by the alias, or only in plain words, so
  neither BM25 nor an off-the-shelf English encoder can rely on the invented word.
- Three aspects per concept are held out: their documents answer the test queries and never
  appear in training pairs; the other three documents feed every training-side file. A tuned
  encoder must therefore carry the vocabulary it learned to documents it never saw.
- Near-miss distractors share surface words (and sometimes the invented word, as a name) with a
  concept but are about something else; sacred records are placeholders only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
from collections import Counter, defaultdict

SEED = 20260301
ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
OUT = os.path.join(ROOT, "datasets")
ASPECTS = ["history", "howto", "season", "materials", "stories", "rules"]
SACRED_TEXT = "[SACRED — placeholder: content held by the community, never included]"

# --------------------------------------------------------------------------------------------
# Concepts. Placeholders in sentences: {T} this concept (definite noun phrase), {aT} with "a",
# {Ts} plural, {N} the bare noun (countable things only); {c:key} / {ca:key} / {cs:key} the same
# for another concept (a cross-reference).
# --------------------------------------------------------------------------------------------


def an(np):
    return ("an " if np[0].lower() in "aeiou" else "a ") + np


def mass(word, alias, plains, article=""):
    """A concept named without a count noun: 'velmora', 'the thrennel', 'Keshel'."""
    art = article + " " if article else ""
    return {"count": False, "word": word, "alias": alias,
            "t": art + word, "alias_t": art + alias, "plains": plains}


def count(word, alias, plains):
    """A countable thing: 'the fennick', 'a fennick', 'fennicks'. plains: [(singular, plural)]."""
    return {"count": True, "word": word, "alias": alias,
            "t": "the " + word, "a": an(word), "pl": word + "s",
            "alias_t": "the " + alias, "alias_a": an(alias), "alias_pl": alias + "s",
            "plains": plains}


CONCEPTS = []


def concept(key, cat, name, gloss, kw, history, howto, season, materials, stories, rules, q,
            titles=None):
    d = dict(name)
    d.update(key=key, cat=cat, gloss=gloss, kw=kw, q=q, titles=titles or {},
             facts=dict(zip(ASPECTS, [history, howto, season, materials, stories, rules])))
    assert len(q) == 6, key
    CONCEPTS.append(d)


# ---- seasonal practices --------------------------------------------------------------------
concept(
    "velmora", "season",
    mass("velmora", "dornwake", ["the spring weir mending", "the mending of the fish weirs",
                                 "the weir-mending after the thaw"]),
    "the spring gathering at which households mend the fish weirs once the river ice has gone",
    ["fish weir", "weir repair", "stakes", "willow wattle", "alder", "spring thaw"],
    ["The oldest account of {T} in the Keeping House is a letter from 1911 describing forty people standing waist-deep in the Ostrel, passing stakes from hand to hand.",
     "Before the county built the Tamsel road, {T} was also the first time upstream and downstream families met after the winter.",
     "The weirs at the narrows were rebuilt in stone in the 1930s, but families kept mending the wooden wings every spring, and the gathering kept its old name.",
     "Attendance fell away in the 1970s and recovered only when the school began sending its oldest class to help."],
    ["Work starts at the lowest weir, so that anything washed loose is caught by the next one down.",
     "Broken stakes are pulled with a rope and lever, and new ones of split alder are driven in with wooden mallets, never iron.",
     "The wattle between the stakes is rewoven with fresh willow rods, thick ends down, each row pressed tight with a boot.",
     "Last of all, the eel gap in the middle of each weir is left open a hand's width, so the river is never closed completely."],
    ["{T} is held in the first settled week after the ice leaves the lower river, usually late March or early April.",
     "Nobody fixes the date in advance; {c:thrennel} waits for {c:tuskin} and for the water to drop below the marker stone at {c:orrow}.",
     "In a late spring it has slipped to the end of April, and in 1947 it was held twice because a flood carried off the new stakes."],
    ["Each weir takes about three hundred stakes of alder, cut the autumn before and seasoned under the eaves of {c:tambry}.",
     "Willow rods for the wattle are cut green on the morning of the work from the pollards along {c:marrun}.",
     "People bring mallets, rope, hay to kneel on at the bank, and {c:hessock} for the midday meal."],
    ["Children are told that the river counts the stakes, and that a weir with one stake too few will lose its eels to the otters.",
     "One story remembers a girl who wove the eel gap shut as a joke and had to sit beside it all night until the elders let her open it.",
     "Old people say a year of good mending follows a winter in which {c:vask} was heard early."],
    ["Every household that takes fish from a weir owes at least one day's work at {T}, or sends food for the workers instead.",
     "Stakes may be cut only from the alder carr that {c:thrennel} sets aside each year; cutting anywhere else is a matter for {c:orrick}.",
     "Newcomers may join from their first spring, and the first stake they drive is marked with a notch so they can find it again."],
    ["has velmora always been done the same way", "what actually happens on a velmora work day", "what time of year is velmora",
     "what should I take along to velmora", "what do grandparents tell kids about the river and the fish fences", "is everyone expected to help at velmora"])

concept(
    "tarrowick", "season",
    mass("tarrowick", "elvernight", ["the autumn eel watch", "the night eel trapping", "the October eel watch"]),
    "the autumn night watch at the weirs, when eels are trapped on their run downstream",
    ["eel run", "night watch", "eel traps", "October", "dark moon", "weirs"],
    ["Parish records from the 1820s mention eels paid as rent, and the Keeping House believes {T} is at least that old.",
     "For most of the last century {T} fed families through the winter, because eels smoked at {c:tambry} kept until spring.",
     "After eel numbers fell in the 1980s the watch grew smaller, and since 2009 part of every night's catch has been released above the weirs."],
    ["Watchers sit at the weirs from dusk with shaded lamps and check {cs:wirran} every hour.",
     "Eels are lifted out into a wet sack, never a dry one, and carried up the bank before they are counted.",
     "Talk is kept low and no fire is lit on the water side, because the old watchers held that eels turn back from light."],
    ["{T} follows the dark of the moon in October, when the eels run downstream on wet, windy nights.",
     "A run usually lasts three or four nights, and a good autumn may bring two runs a fortnight apart.",
     "Watchers look for rising water after rain; a clear, still night under a bright moon is almost always empty."],
    ["Each watcher needs a shaded lamp, a wet sack, a wooden tally stick and warm clothes for a night on cold stones.",
     "The traps are the funnel baskets of willow that the valley calls {cs:wirran}, set into the eel gap of each weir.",
     "Before {c:tambry} had a stove, the watch kept a turf fire on the bank to dry the sacks and warm hands."],
    ["A well-known tale tells of an eel as long as a boat that swam through {c:orrow} and was never caught, because the watcher laughed at it.",
     "Watchers pass the night swapping riddles, and some riddles are only ever told at the weir.",
     "Grandparents remember being carried home asleep in the empty sacks."],
    ["Every household on {c:ambrel} sends a watcher for at least one night of the run.",
     "The catch is counted on the bank and shared between households, and the first eel goes to whoever is oldest on the watch.",
     "Since 2009 every tenth eel goes back above the weir, a rule {c:thrennel} agreed after the poor years."],
    ["how far back does tarrowick go", "what does a night at tarrowick involve", "when do the eels head downriver in the autumn",
     "packing list for a tarrowick night", "tarrowick legends", "who gets what at the end of tarrowick"])

concept(
    "ossenday", "season",
    mass("ossenday", "clampmas", ["lifting day", "the first-frost lifting of the root crops", "the day the roots come up"]),
    "the first dry day after the first hard frost, when root crops are lifted and stored in clamps",
    ["root crops", "potatoes", "first frost", "clamp", "lifting", "straw"],
    ["Before shop potatoes, {T} decided whether a household would be hungry by March, and old diaries record the weight of every clamp.",
     "The word appears in a school log of the 1860s, where the teacher noted that half the class was absent for it.",
     "Since the 1990s the community garden on the Tamsel allotments has kept {T} alive for families who no longer farm."],
    ["Roots are lifted with a fork from the outside of the bed inward, so that no tuber is speared.",
     "Everything is laid out to dry in the wind for an hour, then sorted: damaged roots for eating now, sound ones for storing.",
     "The sound roots go into a clamp, a heap on straw covered with more straw and then a skin of earth, with a twist of straw left as a chimney."],
    ["{T} is the first dry day after the first hard frost, usually in the second half of October.",
     "A light frost sweetens the parsnips and turnips, but a hard one before lifting can spoil the potatoes, so people watch the sky closely.",
     "When {c:brannow} shows in mid October, many families lift early rather than risk the rain."],
    ["A flat-tined fork, baskets, plenty of dry straw and a spade for the earth skin are all that is needed.",
     "Clamps are built on the dry bank behind the houses, away from the floods that reach {c:marrun}.",
     "The straw is saved from the summer oats, and reed from {c:quellering} is used where straw runs short."],
    ["Children hunt for the biggest potato, and the finder is excused from washing up after the evening meal.",
     "A saying goes that what is lifted in anger will rot in the clamp, so quarrels are put off until the next day.",
     "One diary tells of a clamp opened in a hard February that fed three families through the snow."],
    ["Neighbours help each other in turn, and nobody eats supper until the last garden on the lane is lifted.",
     "A share of the first basket is left at the gate for anyone who has no garden.",
     "Clamps may not be opened before midwinter except in need, and then the household tells {c:thrennel}."],
    ["why did ossenday matter so much to families back then", "keeping root vegetables through the winter without a cellar", "how do people know ossenday has come",
     "gear for ossenday", "ossenday superstitions", "what do neighbours owe each other on ossenday"])

concept(
    "quellering", "season",
    mass("quellering", "reedwold", ["the midsummer reed cutting", "the reed harvest on the marsh", "the reed cut"]),
    "the midsummer cutting of reed on the marshes, for thatch and for mats",
    ["reed cutting", "marsh", "thatch", "sheaves", "sickle", "midsummer"],
    ["Thatch on the older houses at Linnet Bend still holds reed from {T} of the 1950s, according to the thatcher who last repaired them.",
     "Reed was once sold downriver by the boatload, and the money paid for the school's first stove.",
     "The cut almost stopped when metal roofs arrived, but mat makers and the bird society now share the work."],
    ["Reed is cut low with a short sickle, gathered into sheaves as thick as a forearm and tied with a twist of its own stems.",
     "Cutters work in a line across the bed, leaving every third strip standing for nesting birds.",
     "Sheaves are stood upright in stooks to dry for a week before they are carried out on {ca:drubbet}."],
    ["{T} starts on the first dry morning after midsummer, when the reed is green-gold but before the seed heads open.",
     "Cutting goes on for two or three weeks, mostly in the cool of early morning.",
     "In a wet summer the cut waits until the marsh can carry a person, and in some years it has slipped into August."],
    ["Cutters need a short sickle, leather gloves, tying twine of {c:hemmet} and boots that can stand the mud.",
     "The best reed grows in the lower marsh below {c:marrun}, where the water is slow.",
     "Green reed goes to the makers of {cs:gannick}; the rest dries for thatch and for lining the clamps at {c:ossenday}."],
    ["It is said that the reed beds whisper the names of the cutters who died that year, which is why people sing while they cut.",
     "A tale tells of a cutter who left no strip standing and heard no birds at his window the next spring.",
     "Children make reed boats at the end of the cut and race them down to the ford."],
    ["The marsh is common ground, so each household may cut only its share of sheaves, counted on a tally at the end of each day.",
     "One strip in three stays standing for the birds, and nobody cuts a bed once the first nest is found in it.",
     "The first sheaf goes to whoever is mending a roof that year."],
    ["what did the valley do with the quellering harvest in earlier times", "technique for harvesting marsh grass for roofing", "what month is quellering",
     "quellering kit list", "songs and legends connected with quellering", "is there a limit on how much you can take at quellering"])

concept(
    "ammeltide", "season",
    mass("ammeltide", "birkenrun", ["the birch tapping", "sap time in early spring", "the tapping of the birches"]),
    "the early-spring weeks when birch trees are tapped for sap that is boiled down into syrup",
    ["birch sap", "tapping", "syrup", "spile", "early spring", "boiling"],
    ["The Keeping House holds a tapping spout of bone found in a field at Upper Brack, which suggests {T} is very old indeed.",
     "In the war years sugar was scarce, and syrup from {T} sweetened the whole valley's porridge.",
     "Most families stopped tapping in the 1960s; the practice came back through a school project in 2003."],
    ["A small hole is bored into the sunny side of the trunk at knee height, angled slightly upward.",
     "A hollow elder spile is tapped into the hole and a pail hung below it.",
     "The sap is boiled down outside over a slow fire for most of a day; forty pails make about one pail of syrup."],
    ["{T} begins when the nights are still frosty but the days are warm, usually in early March.",
     "The sap runs for about three weeks and stops when the birch buds break.",
     "Tappers watch the twigs: when a snapped birch twig drips, it is time."],
    ["Tappers need a hand auger, elder spiles, clean pails or {cs:tesset}, and a big iron pot for the boiling.",
     "The spiles are cut the autumn before and the pith pushed out with a hot wire.",
     "Only mature birches as thick as a person's waist are tapped."],
    ["Children are told that the birches sing in March, and that with an ear to the trunk you can hear the sap climbing.",
     "A story tells of a greedy tapper who bled a tree dry and found it dead by summer.",
     "The first cup of sap is drunk cold, straight from the tree, and is said to wash the winter out of you."],
    ["No tree is tapped two years running; tappers mark used trees with a knot of red wool.",
     "Holes are plugged with a peg of the same birch when the tapping ends.",
     "Syrup made from the common woodland is shared with households that have no trees of their own."],
    ["ammeltide in grandparents' time", "collecting tree water in spring to make a sweetener", "how can you tell ammeltide has started",
     "ammeltide equipment", "folk tales about ammeltide", "how do ammeltide tappers look after the trees"])

concept(
    "olvenning", "season",
    mass("olvenning", "lanthorning", ["the midwinter lantern walk", "the longest-night walk along the river", "lantern night"]),
    "the lantern walk along the river on the longest night of the year",
    ["lantern walk", "midwinter", "longest night", "lanterns", "river path", "remembrance"],
    ["The earliest description of {T}, from 1898, mentions reed torches rather than lanterns.",
     "Tin lanterns came in with the railway, and paper lanterns made at the school replaced many of them after 1970.",
     "During the blackout years the walk was held in darkness, each walker holding the coat of the one in front."],
    ["Walkers gather at dusk at {c:keshel} and light their lanterns from a single flame.",
     "The walk follows the river path down to {c:orrow} and back, in silence except for the songs at the water.",
     "At the ford each household sets one lantern on the stones for the people it lost that year."],
    ["{T} is held on the longest night of the year, around the twenty-first of December.",
     "If the river is in flood the walk is shortened to the top of the bank, but it is never moved to another night.",
     "Walkers set off as soon as the last light leaves the fell tops."],
    ["Lanterns are made of tin, or of paper stretched over willow frames, with a short beeswax candle.",
     "Each household brings one extra lantern for the stones at the ford.",
     "Hot water sweetened with syrup from {c:ammeltide} is kept ready at {c:tambry} for the return."],
    ["It is said that the river remembers the light and carries it down to the sea for the ones who have gone.",
     "A tale tells of a lantern that floated upstream one year, and of the family that took it as the sign of a new child.",
     "Children are told to count the lights on the stones, but never out loud."],
    ["Anyone may walk, but the songs at the water are led only by those the community asks, and they are never recorded.",
     "Photographs are not taken at the ford; the Keeping House holds only the public parts of {T}.",
     "Lanterns are carried home again; nothing is left in the river."],
    ["how has olvenning changed over the generations", "what do people do on the olvenning walk", "olvenning date",
     "what do I carry for olvenning", "legends about lights on the river in midwinter", "is anything forbidden at olvenning"])

concept(
    "skarrow", "season",
    mass("skarrow", "fellsear", ["the late-winter burn on the upland meadows", "the spring burning of the fell grazing", "the hill burn"]),
    "the controlled late-winter burning of the upland meadows to renew the grazing",
    ["controlled burn", "fell grazing", "firebreak", "old grass", "beaters", "late winter"],
    ["Pollen cores from the bog below the fell show charcoal layers going back many centuries, and local people link them to {T}.",
     "The county banned burning for a few years after a fire in 1976 spread into the plantation, and the meadows filled with bracken.",
     "Since 1995 {T} has been run together with the fire service, who send a crew to stand by."],
    ["A firebreak is cut and raked around each patch the day before, and the fire is lit on the downwind edge so it creeps slowly into the wind.",
     "Beaters with birch brooms walk the edges and put out anything that jumps the break.",
     "Each patch is small, about the size of a hay field, and no more than three are burned in a day."],
    ["{T} happens in late February or early March, after the snow has gone but before birds start nesting on the fell.",
     "The ground must be wet underneath and the old grass dry on top, which usually means a breezy day after a dry spell.",
     "If the wind turns to the east the burn is called off, whatever has been prepared."],
    ["Beaters carry birch brooms and shovels, and water barrels are hauled up for every burn on {ca:drubbet}.",
     "The old grass itself is the only fuel; no oil or straw is ever added.",
     "A horn is kept at the top of the meadow to call everyone off if the wind changes."],
    ["Old people say the fell needs its winter coat burned off so it can put on a green one.",
     "A story tells of a shepherd who saved the lambing fold by beating out a runaway fire with his own coat.",
     "Children watch from {c:keshel}, and it is said that whoever sees the first hare run from the smoke will marry within the year."],
    ["Nobody burns alone: {c:thrennel} names a burn leader, and no patch is lit without them.",
     "The fire service and the nearest farms are told the evening before.",
     "Patches are burned in rotation, each one no more than once in eight years."],
    ["has skarrow ever been stopped", "how does skarrow stay safe", "what conditions are right for skarrow",
     "what do you need for skarrow", "folk tales from the hill burning", "who is in charge at skarrow"])

# ---- tools ---------------------------------------------------------------------------------
concept(
    "fennick", "tool",
    count("fennick", "meshbone", [("netting needle", "netting needles"), ("net-mending needle", "net-mending needles")]),
    "a flat needle of bone or horn used for mending fishing nets",
    ["netting needle", "net mending", "bone needle", "twine", "mesh", "knots"],
    ["Bone {Ts} have been dug up at the old landing at Tamsel, and they look almost exactly like the ones used today.",
     "From the 1950s plastic {Ts} from the shop replaced many bone ones, but menders say the plastic snaps in cold hands.",
     "A set of seven {Ts} owned by one family for four generations is on loan to the Keeping House."],
    ["{aT} is loaded by winding twine around its central tongue and down through the notch at its tail.",
     "The mender works from left to right along the torn row, tying a sheet bend at each mesh.",
     "The mesh is kept even by working over a flat gauge stick held in the other hand."],
    ["Nets are mended mostly in the long evenings of January and February, before {c:velmora} and the spring fishing.",
     "Menders often sit together in {c:tambry}, where it is warm and the nets can hang from the beams.",
     "In summer {Ts} come out again after storms, when driftwood tears the nets set below the ford."],
    ["The best {Ts} are carved from the shin bone of a sheep or from antler, and polished smooth with sand.",
     "Twine for mending is usually {c:hemmet}, waxed to stop it fraying.",
     "Every mender keeps a set of sizes, a small one for eel nets and a long one for the river nets."],
    ["A riddle asks what has a tongue but never speaks and an eye but never sees; the answer is {aT}.",
     "Children were once given their first {N} on their seventh birthday.",
     "It is said that a needle borrowed without asking will tie knots that slip."],
    ["{Ts} are personal tools and are not lent, except under {c:kessing} and returned with a gift.",
     "A mender's {Ts} are buried with them or passed to whoever they taught.",
     "A net brought in torn must be mended before the next fishing day by the household that tore it."],
    ["have fennicks changed much over the years", "using a fennick for the first time", "what time of year do people repair fishing nets",
     "what material is a fennick", "fennick folklore", "is it ok to borrow a fennick"])

concept(
    "quarl", "tool",
    count("quarl", "hakeframe", [("fish-drying rack", "fish-drying racks"), ("drying frame", "drying frames")]),
    "a tall wooden rack on which split fish are hung to dry in the wind",
    ["drying rack", "split fish", "wind drying", "ash poles", "rails", "dried fish"],
    ["Old photographs from Linnet Bend show whole rows of {Ts} along the river, hung with split fish like washing.",
     "After electric freezers arrived, most {Ts} were pulled down and burned for firewood.",
     "Two {Ts} were rebuilt in 2014 for a school project and are used again each autumn."],
    ["Fish are split along the back, cleaned, and hung tail up over the rails so the rain runs off.",
     "The rails are turned every morning so both sides of the fish get the wind.",
     "After a week on {aT} the fish are stiff enough to go into {c:tambry} for a light smoking."],
    ["{Ts} are used mostly in late summer and early autumn, when the wind is dry and the flies are fewer.",
     "In wet weeks the fish are moved inside, so the racks stand empty more often than not.",
     "By {c:olvenning} every rack has been taken down and stacked away from the snow."],
    ["{aT} is built of peeled ash poles lashed together, about twice the height of a person, with movable rails.",
     "The lashings are {c:hemmet} cord, replaced every year because the sun rots it.",
     "The feet stand on flat stones so the poles do not rot in the wet ground."],
    ["Children were warned that ravens count the fish on {aT} and take one for every child who is idle.",
     "A song tells of a storm that blew a whole rack of fish into the river and fed the otters for a month.",
     "Courting couples were said to meet behind the racks, where the smell kept the old people away."],
    ["Each household hangs its fish on its own rails, marked with a pattern of notches.",
     "Taking fish from another household's rail is a serious matter, settled by {c:orrick}.",
     "The racks nearest the river belong to no one and are shared in turn."],
    ["what happened to all the quarls", "preparing fish for a quarl", "when are quarls in use",
     "how is a quarl put together", "folk tales about birds stealing drying fish", "who owns which quarl"])

concept(
    "tolleck", "tool",
    count("tolleck", "shovestaff", [("punt pole", "punt poles"), ("poling staff", "poling staffs")]),
    "a long ash pole used to push flat-bottomed boats through shallow water",
    ["punt pole", "poling", "flat-bottomed boat", "ash sapling", "shallows", "ferry"],
    ["Before the bridge at Tamsel, goods crossed the river in flat boats pushed with {Ts}, and a ferryman's pole was his most valuable possession.",
     "The longest {N} in the Keeping House measures nearly five metres and belonged to a reed carrier.",
     "Outboard motors replaced most poling in the 1960s, but motors are banned on the marsh, so {T} survived there."],
    ["The poler stands at the back of the boat, drops {aT} straight down beside the hull and walks it backwards.",
     "On the last push the pole is twisted free of the mud and swung forward without a splash.",
     "In deep water it is trailed behind the boat and used as a rudder."],
    ["{Ts} are busiest during {c:quellering}, when reed is brought out of the marsh by boat.",
     "In winter they are oiled and hung under the eaves of {c:tambry} so they do not warp.",
     "During the spring flood nobody poles in the main channel; the water is too deep and fast."],
    ["{aT} is made from a single straight ash sapling, grown for the purpose and cut in winter when the sap is down.",
     "The foot has a forked iron shoe so it does not sink into soft mud.",
     "It is rubbed with linseed oil each autumn."],
    ["A story tells of a poler who leaned too hard on a stuck pole and was left hanging from it in the middle of the river.",
     "Ferrymen were said to read the riverbed through the pole, the way a blind person reads the road through a stick.",
     "Of a stubborn person people say: stiff as a wet {N}."],
    ["Ash for {Ts} is cut only from the coppice above {c:keshel}, one stem per household each year.",
     "Boats and poles left at {c:orrow} may be used by anyone crossing, but must be brought back to the same stone.",
     "Lent poles follow the custom of {c:kessing}."],
    ["where did tollecks come from", "tolleck technique for beginners", "what season do you see tollecks",
     "tolleck wood and fittings", "funny stories about pushing boats with a long stick", "tolleck customs"])

concept(
    "wirran", "tool",
    count("wirran", "griggle", [("willow eel trap", "willow eel traps"), ("funnel basket", "funnel baskets")]),
    "a funnel-mouthed basket trap woven from willow, used to catch eels",
    ["eel trap", "willow basket", "funnel", "weaving", "hazel hoops", "eels"],
    ["Pieces of woven willow found in the river mud at the narrows look like {Ts} and are several hundred years old.",
     "In the 1920s one basket maker at Upper Brack made over a hundred {Ts} a year for the whole valley.",
     "Wire traps from the shop were tried in the 1960s, but they caught fish the valley wanted left in the river, and {Ts} came back."],
    ["{aT} is woven around a mould: first the inner funnel, then the long body, then the closed end with a plug for emptying.",
     "The funnel rods point inwards, so an eel can push in but not out.",
     "A finished trap is soaked for a day before use so the willow swells tight."],
    ["Willow for {Ts} is cut in winter, when the rods are bare and bend best.",
     "The traps are set for the autumn eel run and on some summer nights.",
     "After the run they are dried and hung up, and each spring the damaged ones are rewoven."],
    ["{Ts} are made from one-year willow rods, split hazel hoops and twine of {c:hemmet}.",
     "The plug at the end is carved from alder, which does not rot in water.",
     "A good trap is as long as an arm and a half and as wide as a bucket at the mouth."],
    ["It is said that an eel that escapes from {aT} warns the others, and the trap will catch nothing for a year.",
     "One story is about a child found asleep, curled up inside a large trap after hiding from chores.",
     "Makers weave one crooked rod into every trap so that the river does not think them proud."],
    ["Each trap carries its owner's mark woven into the rim.",
     "No trap is set in {c:fennow}, the stretch left unfished that year.",
     "Every trap must have a gap large enough for small eels to escape."],
    ["did wirrans ever fall out of use", "how is a wirran put together", "best month to gather rods for basket traps",
     "what is a wirran woven from", "wirran superstitions", "legal requirements for a wirran"])

concept(
    "scorrel", "tool",
    count("scorrel", "hidebane", [("bone scraper", "bone scrapers"), ("hide scraper", "hide scrapers")]),
    "a curved scraper of bone used to clean hides and birch bark",
    ["bone scraper", "hides", "tanning", "bark", "bevelled edge", "scraping"],
    ["The oldest {N} in the Keeping House was found when the school was extended in 1988.",
     "Tanning was a winter trade at Upper Brack until the 1940s, and every tanner kept a rack of {Ts}.",
     "Today {Ts} are used more for cleaning birch bark for {cs:tesset} than for hides."],
    ["The hide is laid over a smooth log and the scraper pushed away from the body in long, even strokes.",
     "The edge is held at a low angle so it lifts the flesh without cutting the skin.",
     "For bark, the rough outer layer is scraped off in short strokes until the smooth inner skin shows."],
    ["Hide work is done in autumn after sheep are killed for the winter, and bark is scraped in early summer when it peels easily.",
     "Nobody scrapes in frost, because the hide cracks.",
     "Many people scrape bark together in June, in the same week as the first hay."],
    ["{aT} is made from the leg bone of a deer or a cow, split and ground to a bevelled edge.",
     "A handle wrapped in leather or {c:hemmet} cord gives a grip.",
     "The edge is sharpened on a sandstone from the river."],
    ["A lazy {N} leaves the hair on, people say of any job done badly.",
     "It is said that the first scraper was the jaw of a giant pike.",
     "Grandparents used to scratch a line on a child's {N} for every hide they finished."],
    ["A tanner never lends {aT}; the edge is worn to one hand.",
     "Scraps from the hides are buried, not thrown into the river.",
     "Bark is taken only from fallen trees or from trees that {c:thrennel} marks for cutting."],
    ["what used to be done with a scorrel", "scorrel technique", "what time of year do people clean skins and bark",
     "what is a scorrel made from", "scorrel proverb", "would a tanner share a scorrel"])

concept(
    "drubbet", "tool",
    count("drubbet", "slodder", [("hauling sledge", "hauling sledges"), ("low wooden sledge", "low wooden sledges")]),
    "a low wooden sledge used to haul firewood, reed and water over snow and mud",
    ["sledge", "hauling", "runners", "firewood", "snow", "ponies"],
    ["Before tractors, {Ts} pulled by ponies carried most of the valley's firewood, reed and peat.",
     "{aT} from around 1900 with runners of bent oak is kept at the Keeping House, its boards worn smooth.",
     "Children's {Ts} were made smaller and raced down the school field in winter."],
    ["The load is stacked low and tied down with a cross of rope so it does not shift on slopes.",
     "Going downhill, someone walks behind holding a brake rope tied to the back rail.",
     "On mud, the runners are greased with tallow and the sledge is pulled across planks."],
    ["{Ts} are used most in winter, when frozen ground and snow let them slide easily.",
     "They come out again in summer for reed from {c:quellering}, dragged over the wet marsh.",
     "Before {c:skarrow} they carry water barrels up the fell."],
    ["{aT} has two runners of oak bent in steam, a deck of ash boards and a front rail for the hauling rope.",
     "Rope of {c:hemmet} is used for hauling and lashing.",
     "On the stoniest tracks the runners are shod with thin iron strips."],
    ["A story tells of a loaded sledge that slid away down the fell with its firewood and ended up in the river at {c:orrow}.",
     "Courting couples once pulled each other on {Ts} across the frozen meadows.",
     "There is a saying that a heavy {T} makes a light heart, because the work is shared."],
    ["The common {Ts} at {c:tambry} are lent under {c:kessing} and must be returned clean.",
     "{aT} is never loaded higher than the puller's waist.",
     "Tracks across {c:marrun} are closed to sledges while the grass is growing."],
    ["drubbet use before machines", "drubbet handling on steep ground", "when do people use a drubbet",
     "how is a drubbet constructed", "runaway sledge tale", "drubbet loading limits"])

# ---- places --------------------------------------------------------------------------------
concept(
    "keshel", "place",
    mass("Keshel", "Tholstane", ["the meeting rock above the ford", "the flat council rock", "the gathering stone on the bank"]),
    "the flat grey meeting rock above the ford where the valley holds its gatherings",
    ["meeting rock", "council ground", "gatherings", "sandstone slab", "ring of stones", "above the ford"],
    ["{T} has been the valley's meeting place for as long as there are records; the earliest is a boundary agreement signed there in 1742.",
     "A tithe map of 1840 marks it only as 'flat stone', though everyone in the valley knew its name.",
     "In the 1960s the county proposed quarrying the rock, and the protest that stopped it is well documented in the Keeping House."],
    ["{T} is reached by the river path from Tamsel, about half an hour's walk, and then a short slope of turf.",
     "Visitors are asked to keep to the path and not to climb the upper ledge.",
     "There are no signs; look for the large flat grey slab above the ford with a ring of smaller stones around it."],
    ["Meetings are held at {T} at the turn of each season, and {c:thrennel} is drawn there every autumn.",
     "In winter most meetings move indoors to the school hall, but the autumn drawing always happens on the rock.",
     "{c:olvenning} sets out from there at dusk on the longest night."],
    ["The rock is a single slab of grey sandstone about ten paces long, worn smooth on top.",
     "The ring of smaller stones marks where speakers stand.",
     "Cup-shaped hollows in the surface hold rainwater, and they are left alone."],
    ["It is said that the rock was dropped by a giant who was carrying it to dam the river and grew tired.",
     "A story tells of two families who argued on the rock for three days, until the river rose and they had to share a boat home.",
     "Children are told that the rock listens, so nothing untrue should be said on it."],
    ["Anything agreed on {T} binds the whole valley.",
     "Speakers stand inside the ring of stones and are not interrupted.",
     "Some of the rock's old names are held by the community and are not shared in the archive."],
    ["was keshel ever under threat", "directions to keshel", "keshel meeting calendar",
     "what does keshel look like", "legend of how the big flat rock got there", "keshel speaking customs"])

concept(
    "marrun", "place",
    mass("Marrun", "Wetholm", ["the flood meadow", "the wet meadowland along the lower river", "the common hay meadow"], article="the"),
    "the common flood meadows along the lower river, used for hay and grazing",
    ["flood meadows", "common grazing", "hay", "winter floods", "silt", "causeway"],
    ["Enclosure papers from 1802 show that the valley refused to divide {T}, and it has stayed common ground ever since.",
     "Drainage ditches were dug in the 1870s and partly filled in again in 2010 to bring back the wet ground.",
     "The oldest hay rights on {T} are cut into {cs:drummick} kept by the oldest families."],
    ["Hay on {T} is cut by hand or with small mowers, always from the middle outwards so animals can escape.",
     "Cattle go onto the meadows after the hay is in and come off before the winter floods.",
     "Walkers keep to the raised causeway when the ground is wet."],
    ["{T} floods most winters, and the silt the water leaves behind feeds next year's grass.",
     "Hay is cut in July, after the ground-nesting birds have fledged.",
     "Cattle graze from August until the first flood, usually in November."],
    ["The meadows are rich in yellow rattle, meadowsweet and great burnet, which give the hay its smell.",
     "The causeway is built of river stones and willow hurdles.",
     "Oak posts mark the edges of each household's hay strip."],
    ["Old people say the winter flood is the river coming to visit its meadow.",
     "A story tells of a cow swept away in a flood that walked home three days later from the next valley.",
     "Children look for the first marsh marigolds, and whoever finds one takes it to the school."],
    ["Each household may graze a set number of animals, counted as 'gates' and cut into its {c:drummick}.",
     "Nobody may plough or fence {T}.",
     "Hay is not cut until {c:thrennel} says the birds have gone."],
    ["who owns the marrun", "how is the marrun managed", "what happens to the marrun in winter",
     "marrun wildflowers", "stories about animals lost in floods on the meadows", "marrun grazing limits"])

concept(
    "tambry", "place",
    mass("tambry", "reekhouse", ["the smokehouse at Linnet Bend", "the shared smokehouse", "the old stone smokehouse"], article="the"),
    "the shared stone smokehouse at Linnet Bend where the valley smokes its fish and eels",
    ["smokehouse", "smoking fish", "eels", "alder chips", "smoke loft", "Linnet Bend"],
    ["{T} was built in 1889 on the foundations of an older smokehouse that had burned down.",
     "Until the 1950s every household in the valley smoked its winter fish and eels there.",
     "Restored in 2012, it is used by families again and by the school for cooking lessons."],
    ["Fish are hung from rods in the upper loft, and a slow fire of alder and oak chips smoulders below.",
     "The fire is kept low and damped with green leaves so that it makes smoke rather than heat.",
     "A keeper checks the fire every few hours, day and night, while a smoking is running."],
    ["{T} is busiest after {c:tarrowick}, when the eels come in, and again in late summer for fish from {cs:quarl}.",
     "In deep winter it is warm and serves as a workroom for mending nets.",
     "It stands cold in spring while the chimney is swept."],
    ["The walls are stone and the roof is reed from {c:quellering}.",
     "The smoking wood is alder and oak, cut and split the year before.",
     "Rods, hooks and trays are shared and stored in the loft."],
    ["It is said that on a still evening the smoke can be smelled in Tamsel, and means someone will eat well.",
     "Net menders passed winter evenings there telling stories, and many recordings in the Keeping House were made inside.",
     "A story tells of a keeper who fell asleep and woke to find the fire out and the eels stolen by a fox."],
    ["Space is shared by turns, and in a busy year {c:ambrel} decides the order.",
     "Whoever lights the fire keeps it until handing over to the next keeper.",
     "Nobody sleeps inside while the fire is burning."],
    ["how old is the tambry building", "tambry smoking process", "tambry busy season",
     "fuel used in the valley smokehouse", "tambry tales", "etiquette at the tambry"])

concept(
    "orrow", "place",
    mass("Orrow", "Wadestone", ["the stone ford", "the shallow crossing below the rock", "the stepping-stone ford"]),
    "the shallow stone ford across the lower river, crossable only at low water",
    ["ford", "stepping stones", "river crossing", "low water", "marker stone", "drovers"],
    ["{T} was the only crossing of the lower river until the bridge at Tamsel opened in 1911.",
     "Drovers brought cattle over on their way to the autumn fairs, and the stones still carry grooves worn by hooves.",
     "The stepping stones were reset after the great flood of 1947."],
    ["Cross {T} only at low water, when the top of the marker stone is dry.",
     "Walk on the upstream side of the stepping stones, facing the current, and use a stick.",
     "Children cross holding an adult's hand, or are carried."],
    ["{T} can be crossed for most of the summer and autumn; in winter and spring it is usually under water.",
     "After rain in the hills the river can rise at the ford within an hour, so people watch the fell tops.",
     "The stones are checked every spring before {c:velmora}."],
    ["The ford is a bar of gravel with twenty-two stepping stones across it.",
     "The marker stone on the near bank has lines cut into it to show the depth.",
     "Boats and {cs:tolleck} are kept on the far bank for when the water is high."],
    ["It is said that a drowned drover walks the ford on misty nights, looking for his last cow.",
     "A story tells of a bride who crossed in flood to reach her wedding, carried on her brothers' shoulders.",
     "Children count the stones as they cross; if the number comes out wrong, they must go back and start again."],
    ["Nobody crosses when the marker stone is covered.",
     "Anyone who sees someone in trouble at the ford must ring the bell at {c:keshel}.",
     "Boats left at the ford may be used by anyone but must be returned."],
    ["importance of orrow before modern roads", "orrow safe crossing advice", "orrow crossing season",
     "what is orrow like underfoot", "ghost stories about the river crossing", "orrow emergencies"])

concept(
    "sillen", "place",
    mass("Sillen", "Kellwater", ["the cold spring on the hillside", "the spring-house well", "the hillside spring at Upper Brack"], article="the"),
    "the cold hillside spring at Upper Brack, with its stone spring-house for keeping food",
    ["cold spring", "spring-house", "drinking water", "crocks", "Upper Brack", "cool store"],
    ["{T} supplied drinking water to Upper Brack until mains water arrived in 1958.",
     "A spring-house was built over it in the 1800s so that milk, butter and cheese could be kept cold in summer.",
     "In dry summers it is the last water on the hill to fail, and in 1976 it kept running when the river was low."],
    ["{T} is reached by a stone path up from the lane at Upper Brack.",
     "Water is drawn from the outflow pipe, never from the basin itself.",
     "Food is kept in covered crocks on the stone shelf inside the spring-house, where the water runs beneath."],
    ["{T} flows all year, warmer than the air in winter and much colder in summer.",
     "The spring-house is cleaned each May, before the summer dairy work.",
     "In hard winters steam rises from the basin on frosty mornings."],
    ["The spring-house is built of dry stone with a slate roof and a wooden door.",
     "Crocks of {c:cromle} and cheese are stored there in summer.",
     "The basin is lined with clay and sand from the river."],
    ["Children are told that the water comes from the roots of the fell and is older than the village.",
     "A story tells of a shepherd who drank from the spring and was never ill again.",
     "Some stories about the spring are held by the community and are not recorded in the archive."],
    ["Nothing may be washed in the basin itself.",
     "The spring-house is shared, and each household's crock carries its mark.",
     "Visitors may drink from the pipe but should not go into the spring-house."],
    ["sillen past use", "using the sillen to keep food cool", "sillen in different seasons",
     "what is stored in the hillside spring building", "sillen legends", "sillen visitor etiquette"])

concept(
    "brennack", "place",
    mass("Brennack", "Summerhowe", ["the high summer pasture", "the upland shieling ground", "the summer grazing on the fell"], article="the"),
    "the high summer pastures on the fell, where families once lived in stone huts with their sheep",
    ["summer pastures", "shielings", "stone huts", "sheep", "drove road", "fell"],
    ["Stone huts on {T} date back at least to the 1600s, and some still have their original doorways.",
     "Whole families once moved up with their sheep for the summer; by 1950 only the young people went.",
     "Today two families still take their flocks up, and volunteers keep the huts standing."],
    ["Flocks are walked up the old drove road in one long day, with a rest at the spring.",
     "Each family has a hut, a fold for the sheep and a patch of ground for a fire.",
     "Milk is made into cheese in the huts and carried down once a week."],
    ["Families go up to {T} in early June, once the lambs are strong enough to walk.",
     "They come down in September, before the first snow on the tops.",
     "The grass up there grows well only after {c:skarrow} has cleared the old growth."],
    ["The huts are dry stone with turf roofs, a single room and a hearth.",
     "Each family carries up blankets, a cheese press, pots and food for the first week.",
     "Folds and walls are repaired every year with the stones that have fallen."],
    ["People who went up as young people say those summers were the happiest of their lives.",
     "A story tells of a girl who kept a whole flock safe through a summer storm by singing to them all night.",
     "It is said that the mist up there lifts for anyone who whistles the right tune."],
    ["Huts belong to families by tradition, recorded on their {cs:drummick}.",
     "Sheep may not go up before {c:thrennel} opens the pasture.",
     "Walls knocked down by walkers must be rebuilt the same day."],
    ["who used to live on the brennack", "what is life like up on the brennack", "dates for taking flocks up to the hill grazing",
     "brennack buildings", "brennack stories", "brennack customs"])

# ---- foods ---------------------------------------------------------------------------------
concept(
    "hessock", "food",
    mass("hessock", "eelbrack", ["smoked eel cake", "eel-and-barley cake", "pressed eel cake"]),
    "a cake of smoked eel pressed together with barley and dried by the fire",
    ["smoked eel", "barley", "pressed cake", "wild garlic", "wooden mould", "travel food"],
    ["{T} is mentioned in a letter of the 1790s as 'the eel bread of the valley', which travellers disliked.",
     "It was the standard food for long working days because it kept for weeks wrapped in a cloth.",
     "The recipe nearly vanished in the 1970s and was written down from two older women in 1996."],
    ["Smoked eel is flaked and mixed with cooked barley, a little fat and chopped wild garlic.",
     "The mixture is pressed firmly into a wooden mould, turned out and dried beside the fire.",
     "Before eating, slices are fried on a flat stone or in a pan until crisp."],
    ["{T} is made in late autumn, after {c:tarrowick}, once the eels have been smoked.",
     "It is eaten through the winter and carried as the midday meal at {c:velmora}.",
     "A good batch lasts until spring if it is kept dry."],
    ["The ingredients are smoked eel, pearl barley, mutton fat or butter, and wild garlic or salt.",
     "The moulds are square boxes of alder wood with a lid that presses down.",
     "Eel from {c:tambry} is used; fresh eel does not keep."],
    ["People say a slice of {T} in your pocket will bring you home before dark.",
     "A story tells of a traveller who used a cake as a doorstop and then had to eat it when he was snowed in.",
     "Children compete for the crispy corner."],
    ["The first cake of each batch goes to the oldest person in the household.",
     "{T} is always offered to anyone who helps with the eel work.",
     "Cakes made with stolen eels are said to crumble; taking eels is a matter for {c:orrick}."],
    ["where did the hessock recipe come from", "how do I make hessock at home", "what part of the year is hessock prepared",
     "eel and grain cake ingredients", "funny hessock tales", "hessock serving customs"])

concept(
    "saffle", "food",
    mass("saffle", "hearthcake", ["stone-baked flatbread", "hearth-stone bread", "flatbread from the baking stone"]),
    "a thin flatbread of barley and oats baked on a hot stone",
    ["flatbread", "baking stone", "barley flour", "oats", "marsh seed", "hearth"],
    ["Baking stones blackened by long use have been found in several houses in Upper Brack.",
     "{T} was everyday bread for households without an oven, which was most of them until the 1900s.",
     "The school revived it in 1999, and it is now baked at every valley gathering."],
    ["A dough of barley and oat flour is mixed with water and a pinch of salt, then patted out thin by hand.",
     "A flat stone is heated in the fire until a drop of water dances on it.",
     "The bread is cooked quickly on each side, then stacked under a cloth to keep it soft."],
    ["{T} is baked all year, but seed from the marsh goes in only in late summer, when it is fresh.",
     "Wild garlic is folded into the dough in April and May.",
     "Big batches are baked for {c:olvenning} and for the autumn meeting at {c:keshel}."],
    ["Barley flour, oat flour, water, salt and whatever is in season: marsh seed, wild garlic or crushed hazelnuts.",
     "The baking stone must be a fine-grained river stone that does not crack in the heat.",
     "A wooden paddle is used to turn the bread."],
    ["It is said that bread baked on a cracked stone makes the eaters quarrel.",
     "A story tells of a baker who fed the whole valley from one stone during the flood of 1947.",
     "Children bake their first loaf at seven and give it to a neighbour."],
    ["At gatherings the bread is broken, never cut.",
     "A guest is always offered the first piece.",
     "Baking stones are handed down and never sold."],
    ["how long has saffle been around", "saffle method", "what seasonal things go into saffle",
     "what do I need to bake saffle", "stories about feeding everyone during a flood", "saffle table manners"])

concept(
    "cromle", "food",
    mass("cromle", "sourcrock", ["fermented berry paste", "crock-berry paste", "the berry paste kept in crocks"]),
    "a paste of wild berries fermented in clay crocks and kept for winter",
    ["berry paste", "fermented", "crocks", "cowberries", "rowan", "winter store"],
    ["Crocks with dark stains found in old cellars suggest {T} was made here long before anything was written down.",
     "In hard winters it was the only sharp taste in the house, and children were given it against winter sickness.",
     "Recipes vary from house to house, and the Keeping House has recorded eleven of them."],
    ["Berries are crushed with a wooden pestle, mixed with a little salt and honey, and packed tight into a crock.",
     "A layer of fat or a wet cloth seals the top, and the crock is left somewhere cool to ferment for a month.",
     "It is eaten a spoonful at a time with bread or smoked fish."],
    ["The berries are picked in late August and September on the lower fell.",
     "{T} is ready by midwinter and keeps until the next summer.",
     "Crocks are opened for the first time at {c:olvenning}."],
    ["Cowberries, crowberries and rowan berries are the usual fruit, with a few bilberries for colour.",
     "The crocks are fired clay with a wide mouth and a wooden lid.",
     "In summer the crocks are kept at {c:sillen}, where it stays cool."],
    ["A saying goes that a house with no {T} by midwinter will have a sad spring.",
     "A story tells of a crock forgotten for ten years that turned out to be the best anyone had tasted.",
     "Children dare each other to eat rowan berries straight from the tree, and learn quickly why they are fermented."],
    ["Berries on common ground are picked by hand only, never with a rake.",
     "A spoonful is given to any household in mourning.",
     "Each family's recipe is its own and is passed on only with permission."],
    ["why did families rely on cromle", "cromle method", "when to pick fruit for cromle",
     "which fruit for cromle", "stories about old forgotten food jars", "cromle picking etiquette"])

concept(
    "tivvet", "food",
    mass("tivvet", "dolebroth", ["memorial broth", "the funeral broth", "the broth of remembrance"]),
    "a thin broth of roots and dried fish that neighbours cook after a death",
    ["memorial broth", "funeral", "roots", "dried fish", "neighbours", "mourning"],
    ["{T} has been served after funerals in the valley for as long as anyone remembers; a diary of 1850 calls it 'the thin soup of grief'.",
     "During the influenza of 1919 there were so many funerals that {T} was cooked in the school boiler.",
     "The custom continues today, even for funerals held outside the valley."],
    ["Roots are cut small and simmered with dried fish and a handful of barley for most of a day.",
     "No herbs or spices are added; it is meant to taste plain.",
     "It is served in small cups to everyone who comes to the house, and refilled as often as they wish."],
    ["{T} belongs to no season; it is made whenever there is a death in the valley.",
     "It is also made once a year on the night of {c:olvenning}, for those remembered at the ford.",
     "In summer, when fish is scarce, dried fish from the store kept for {cs:quarl} is used."],
    ["Turnips, carrots, leeks and dried fish go in, with barley to thicken it.",
     "It is cooked in a large iron pot kept for nothing else.",
     "Neighbours bring the roots, so the bereaved family buys nothing."],
    ["It is said that {T} tastes of the person being remembered.",
     "A story tells of a man who came to every funeral for the broth, until people started inviting him to their weddings too.",
     "The words said over the pot are held by the community and not recorded."],
    ["Neighbours make {T}, never the bereaved household.",
     "Nobody is turned away from the pot.",
     "The pot is washed in running water afterwards, not at the house."],
    ["tivvet in the past", "how do you prepare tivvet", "when is tivvet served",
     "what goes into soup after a funeral", "what do people say about tivvet", "who cooks tivvet"])

concept(
    "parrin", "food",
    mass("parrin", "mastmeal", ["nut-meal porridge", "hazelnut and acorn porridge", "roasted nut porridge"]),
    "a porridge of roasted hazelnut and leached acorn meal",
    ["acorn meal", "hazelnuts", "porridge", "leaching", "roasting", "famine food"],
    ["Acorn meal was eaten in the valley in famine years, and {T} is remembered as what kept people alive in 1816.",
     "Later it became a comfort food, eaten on cold mornings with syrup from {c:ammeltide}.",
     "It is now a favourite at the school breakfast club."],
    ["Acorns are shelled and soaked in running water for several days to wash out the bitterness.",
     "Hazelnuts and the soaked acorns are roasted, then ground on a stone to a coarse meal.",
     "The meal is cooked slowly with water or milk into a thick porridge."],
    ["Acorns and hazelnuts are gathered in September and October.",
     "The meal is made through the autumn and stored in sealed pots for the winter.",
     "{T} is eaten mostly in the coldest months."],
    ["Acorns from the valley oaks, hazelnuts, water or milk, and a grinding stone.",
     "The soaking basket is a loosely woven {c:wirran} hung in the stream.",
     "Syrup or dried berries are stirred in for sweetness."],
    ["A story says the acorns were a gift from the oaks in the year without a summer.",
     "Children are told that eating {T} makes you as stubborn as an oak.",
     "Grandparents remember the taste of bitter acorns when the soaking was rushed."],
    ["Nuts are gathered from the ground only, never shaken from the tree.",
     "A share is left for the squirrels and jays that plant the oaks.",
     "Gathering on common ground starts on the day {c:thrennel} announces."],
    ["why did people start eating parrin", "making porridge from oak seeds", "parrin gathering season",
     "what do you need for parrin", "parrin sayings", "parrin foraging etiquette"])

# ---- crafts --------------------------------------------------------------------------------
concept(
    "gannick", "craft",
    count("gannick", "rushwheel", [("rush mat", "rush mats"), ("plaited floor mat", "plaited floor mats")]),
    "a mat plaited from rushes and sewn in a spiral, laid on floors and doorsteps",
    ["rush mat", "plaiting", "floor mat", "spiral", "rushes", "doorstep"],
    ["Earth floors covered with {Ts} were normal in the valley until the 1920s.",
     "A fragment of {aT} found under a floor at Linnet Bend is thought to be two hundred years old.",
     "Mat making is now taught at the Keeping House in winter workshops."],
    ["Rushes are split, damped and plaited into long strips of nine strands.",
     "The strips are sewn edge to edge with a big needle and {c:hemmet} thread, spiralling out from the centre.",
     "The finished mat is pressed flat under boards for a week."],
    ["Rushes are cut in high summer, often in the same weeks as {c:quellering}.",
     "They are dried and stored, then plaited on winter evenings.",
     "New mats are laid in spring, when houses are cleaned."],
    ["Soft rush and green reed are used, cut from the edges of the marsh.",
     "The thread is {c:hemmet} cord, and the needle is a large one of bone.",
     "A plaiting board keeps the strands in order."],
    ["It is said that a family's luck is woven into its doorstep mat.",
     "A story tells of a mat maker who plaited a mat so large that it covered the school floor.",
     "Children learn to plait by making little mats for their dolls."],
    ["Rushes are cut above the root so they grow back.",
     "A new household is given {aT} by its neighbours.",
     "Old mats are burned, never thrown into the river."],
    ["were gannicks common in old houses", "how are gannicks made", "time of year to gather rushes for floor coverings",
     "what are gannicks made of", "gannick good luck beliefs", "when do people give a gannick as a gift"])

concept(
    "vettering", "craft",
    mass("vettering", "aldering", ["bark-and-clay dyeing", "alder-bark dyeing", "the brown dyeing"]),
    "the dyeing of wool in browns and greys with alder bark and river clay",
    ["wool dyeing", "alder bark", "river clay", "natural dye", "browns and greys", "dye bath"],
    ["Valley cloth was known at the markets for its soft browns and greys, all from {T}.",
     "Chemical dyes replaced bark in the 1890s, but some weavers kept to the old method.",
     "Since 2005 a group of weavers has run dye days, and their samples are stored in the Keeping House."],
    ["Alder bark is soaked overnight and simmered for an hour to make the dye bath.",
     "The wool is dipped in the bath, then buried in river clay for a day to darken it.",
     "After rinsing, the wool is hung to dry in the shade so the colour does not fade."],
    ["Bark is collected in spring, when it peels easily from fallen alders.",
     "The dyeing itself is done in summer, when there is time to dry wool outside.",
     "The clay is dug from the river at low water in late summer."],
    ["Alder bark, river clay, water and clean wool are all that is needed.",
     "A copper pot and an iron pot give different shades; iron gives the darkest greys.",
     "Gloves protect the hands, because the dye stains for weeks."],
    ["A story tells of a weaver who dyed her wedding shawl in the river itself, and it came out the colour of a storm.",
     "It is said that the river clay remembers every colour it has made.",
     "After a dye day the children's hands stay brown for days."],
    ["Bark is taken only from fallen trees.",
     "Spent dye is poured onto the ground, never into the river.",
     "Each weaver keeps a sample of every batch for the archive."],
    ["how did vettering start and decline", "colouring yarn with tree bark at home", "vettering time of year",
     "what supplies does vettering need", "vettering folk tales", "vettering and the river environment"],
    titles={"howto": ["How {T} is done", "Doing {T} at home", "{T}, step by step"],
            "materials": ["What you need for {T}", "Materials for {T}", "Bark, clay and pots for {T}"]})

concept(
    "drummick", "craft",
    count("drummick", "kinstave", [("family board", "family boards"), ("notched tally board", "notched tally boards")]),
    "a notched wooden board on which a family records its members, marriages and rights",
    ["family board", "notches", "family lines", "marriages", "grazing rights", "tally"],
    ["The oldest {N} in the valley has notches going back eleven generations, and the family still adds to it.",
     "Land rights, grazing shares and marriages were recorded on {Ts} long before the parish kept registers.",
     "When a court asked for written proof of grazing rights in 1903, {Ts} were accepted as evidence."],
    ["Each person is a notch on the edge; a marriage is a cross-cut joining two lines.",
     "The notches are cut with a small knife, and the year is scratched beside them.",
     "Reading {aT} takes practice; the oldest member of the family usually teaches the next."],
    ["New notches are cut at the autumn gathering at {c:keshel}, in front of witnesses.",
     "The boards are oiled once a year, in winter.",
     "Births from the past year are added at the same autumn gathering."],
    ["{Ts} are made of seasoned oak or yew, about an arm's length long.",
     "The notching knife is kept with the board.",
     "Boards are wrapped in wool and stored in a dry chest."],
    ["A story tells of a family whose board was lost in a flood and found years later on {c:marrun}.",
     "It is said that a board grows warm when a child is born into the family.",
     "Children learn to count by running their fingers along the notches."],
    ["Only the family may touch its board; visitors may look but not handle it.",
     "Some boards are held by the community and are never shown or copied.",
     "A notch once cut is never removed."],
    ["legal importance of the drummick", "interpreting a drummick", "when is a drummick updated",
     "what is a drummick carved from", "stories about a lost family record board", "drummick handling etiquette"])

concept(
    "tesset", "craft",
    count("tesset", "birchkist", [("birch-bark box", "birch-bark boxes"), ("folded bark container", "folded bark containers")]),
    "a box folded from birch bark and stitched with spruce root",
    ["birch bark box", "folding", "spruce root", "stitching", "container", "bark craft"],
    ["{Ts} held everything from berries to salt before tins came to the valley shop.",
     "The Keeping House has {aT} from the 1880s that still holds water.",
     "Bark box making was revived by the weavers' group in 2011."],
    ["A sheet of bark is scored along the fold lines with a bone tool, then folded into shape while it is warm.",
     "The corners are stitched with split spruce root through holes made with an awl.",
     "A rim of bent willow is sewn around the top to stiffen it."],
    ["Bark is peeled in June, when the sap is up and it comes away easily.",
     "Boxes are made through the summer.",
     "{Ts} are used in autumn for berry picking and in spring as sap pails at {c:ammeltide}."],
    ["Birch bark, split spruce root, willow for the rim and an awl are needed.",
     "The bark is cleaned with {ca:scorrel}.",
     "Pine pitch seals the seams when a box must hold liquid."],
    ["It is said that a box folded by a child will never leak.",
     "A story tells of {aT} that floated down the river with a baby's shoe in it, and of the child who found it.",
     "Grandmothers hid coins in {Ts} under the floor."],
    ["Bark is taken from living trees only with care, never cut all the way round the trunk.",
     "Only trees marked by {c:thrennel} may be stripped.",
     "A box lent full is returned full."],
    ["what did people keep in a tesset", "how do you make a tesset", "when to harvest bark for containers",
     "what is a tesset sewn with", "tesset tales", "tesset borrowing custom"])

concept(
    "hemmet", "craft",
    mass("hemmet", "stinglay", ["nettle cord", "nettle-fibre twine", "cord spun from nettles"]),
    "strong cord and twine spun by hand from nettle fibre",
    ["nettle cord", "nettle fibre", "twine", "spinning", "twisting", "fishing line"],
    ["Before cotton and nylon, all the valley's fishing twine was {T}.",
     "During the war, nettles collected by the school were made into cord for nets.",
     "Cord making nearly died out in the 1960s but is now taught every autumn."],
    ["Nettle stems are cut, dried and split, and the fibres stripped from the woody core.",
     "The fibres are twisted between the palms into two strands, which are then twisted together the other way.",
     "New fibres are added by overlapping, so the cord can be made as long as it is needed."],
    ["Nettles are cut in late summer, when the stems are tall and the fibre is strong.",
     "Spinning is done in autumn and winter, often in {c:tambry}.",
     "Fresh cord is needed every spring for {c:velmora} and for the nets."],
    ["Tall stinging nettles from damp ground by the river give the longest fibre.",
     "Gloves are worn for cutting, not for spinning.",
     "Beeswax is rubbed into cord that will be used for nets."],
    ["A story tells of a girl who made her brother a shirt of {T} to keep him safe on the river.",
     "It is said that cord spun in anger will break.",
     "Children get stung the first time and are told that the nettle is teaching them."],
    ["Nettles are cut leaving the roots, and each patch is rested every other year.",
     "Cord for the common nets is spun by everyone in turn.",
     "Old cord is composted, not burned."],
    ["what was hemmet used for before modern twine", "making string from stinging plants", "hemmet harvest timing",
     "which plants make hemmet", "hemmet legends", "hemmet harvesting etiquette"],
    titles={"howto": ["Making {T}", "How {T} is spun", "Spinning {T} by hand"],
            "materials": ["What {T} is made from", "Nettles for {T}", "Materials for {T}"]})

# ---- governance customs --------------------------------------------------------------------
concept(
    "thrennel", "governance",
    mass("thrennel", "lotfive", ["the council of five", "the lot-drawn council", "the lot council"], article="the"),
    "the council of five adults drawn by lot each autumn to settle the valley's shared affairs",
    ["council", "drawn by lot", "five members", "decisions", "agreement", "autumn drawing"],
    ["{T} is older than the parish council, and for a long time the two sat side by side.",
     "Records of its decisions go back to 1742, written on loose sheets kept at the school.",
     "Women have sat on {T} since at least 1890, long before they could vote in national elections."],
    ["Every autumn the names of all adults willing to serve go into a bag, and five are drawn.",
     "{T} meets at {c:keshel} and decides by agreement, not by vote; if the five cannot agree, the matter waits.",
     "Anyone may bring a matter forward by speaking to one of the five."],
    ["The drawing happens at the autumn gathering, after {c:ossenday}.",
     "Members serve for one year and cannot be drawn again the following year.",
     "{T} meets at each turn of the season and whenever the river or the weather demands it."],
    ["The lot is drawn from a bag of undyed wool, with the names written on slips of bark.",
     "Decisions are written in a book kept at the Keeping House.",
     "Members wear no badge; everyone simply knows who they are."],
    ["A story tells of a year when the same name was drawn twice, and the person had to serve as two members.",
     "It is said that the bag knows who is needed.",
     "Children play at the drawing with pebbles."],
    ["Decisions of {T} bind the valley once they are agreed at {c:keshel}.",
     "Members may not decide matters that concern their own family.",
     "The words said at the drawing are held by the community and are not recorded."],
    ["how long has the thrennel existed", "how does someone end up on the thrennel", "when does the thrennel change members",
     "what objects are used for the thrennel", "story about a double draw", "thrennel conflicts of interest"])

concept(
    "kessing", "governance",
    mass("kessing", "borrowthank", ["the lending custom", "lending with a return gift", "the custom of the return gift"]),
    "the custom of lending tools and boats freely, to be returned with a small gift",
    ["lending", "borrowing", "return gift", "tools", "boats", "neighbours"],
    ["{T} is described in a sermon of the 1820s that complains the valley 'lends more than it owns'.",
     "In hard years it meant no household had to own every tool, boat or sledge.",
     "The practice continues today, lawnmowers and bicycles included."],
    ["The borrower asks in person, says how long they need the thing, and returns it clean.",
     "On returning it, the borrower adds a small gift, called a kess: bread, eggs, a jar of syrup or a favour.",
     "The gift should be small; a large one is thought rude."],
    ["{T} goes on all year but is busiest at {c:velmora} and {c:quellering}, when everyone needs tools at once.",
     "Boats are lent mostly in summer.",
     "Sledges go back and forth all winter."],
    ["Anything may be lent except personal tools such as {cs:scorrel} and {cs:fennick}.",
     "Common gifts are {c:saffle}, eggs, cord or syrup.",
     "A borrowed tool that was sharp goes back sharpened."],
    ["A story tells of a man who returned a borrowed boat with a gift so large that the owner never lent to him again.",
     "It is said that a forgotten gift comes back as a leak in your roof.",
     "Children learn the custom by lending each other toys."],
    ["Anything lent must come back in the same condition or better.",
     "Disputes over lent things go to {c:orrick}.",
     "You may refuse to lend, but you must say why."],
    ["kessing in church records", "thank-you present when returning a borrowed tool", "busiest times for kessing",
     "things you cannot borrow under kessing", "kessing cautionary tales", "can I say no to kessing"])

concept(
    "ambrel", "governance",
    mass("ambrel", "poolroll", ["the fishing-pool rota", "the rota of river pools", "the pool list"], article="the"),
    "the rota that decides which household fishes which river pool each year",
    ["fishing rota", "river pools", "households", "fishing rights", "list", "turns"],
    ["The earliest written copy of {T} dates from 1798 and lists twenty-three households.",
     "The oldest stories say it was made to stop fights over the best pools.",
     "In the 1970s {T} was opened to newcomers, who join at the bottom of the list."],
    ["The river is divided into pools, and each household is given its pools for each fishing season in turn.",
     "The list moves down one place each year, so everyone gets the best pools in time.",
     "Households may swap pools by agreement, and the swap is written in the book."],
    ["{T} is read out at the spring meeting at {c:keshel}, before the fishing starts.",
     "Changes are made in autumn, after {c:tarrowick}.",
     "The rota runs from spring to spring."],
    ["The list is written in a book and on a board at {c:tambry}.",
     "Pools are marked with painted stones on the bank.",
     "The book includes a hand-drawn map of the river."],
    ["A story tells of a household that swapped its best pool for a cow, and the cow was the better deal.",
     "It is said that a pool fished out of turn gives only weed.",
     "Children learn the names of the pools by heart."],
    ["No household fishes another's pool without permission.",
     "{c:fennow} is never part of {T}.",
     "A household that leaves the valley gives up its place."],
    ["why does the ambrel exist", "how does the ambrel work", "when does the ambrel get announced",
     "how are ambrel pools identified", "story about trading a fishing spot for livestock", "ambrel etiquette"])

concept(
    "orrick", "governance",
    mass("orrick", "mendright", ["the making of amends", "the custom of public amends", "putting things right"]),
    "the custom by which someone who has broken a shared rule admits it in public and makes amends",
    ["amends", "apology", "restitution", "dispute", "broken rule", "settlement"],
    ["{T} is older than any court in the valley; the earliest case on record is a stolen boat in 1767.",
     "Until the 1900s most disputes in the valley were settled this way rather than by the police.",
     "The Keeping House holds records of over two hundred cases, some of them very funny."],
    ["The person who broke the rule stands at {c:keshel} and says what they did.",
     "The person harmed says what would put it right; often it is work, goods or a public apology.",
     "When the repair is done, both share bread, and the matter is closed and never mentioned again."],
    ["{T} can happen at any time, but most cases are heard at the seasonal meetings.",
     "Cases about fishing are heard before the spring fishing.",
     "Cases about grazing are heard in autumn."],
    ["Repairs are often paid in eels, cord, firewood or days of work.",
     "The bread shared at the end is usually {c:saffle}.",
     "The case is written in the book, but without names."],
    ["A story tells of a boy who stole apples and had to pick apples for the whole valley.",
     "It is said that a case left unsettled follows you like a dog.",
     "Children play at {T} in the school yard."],
    ["The harmed person decides what is fair, but nobody may be shamed.",
     "Once a case is settled, nobody may bring it up again.",
     "Serious crimes go to the police, not to {T}."],
    ["earliest orrick on record", "what does an orrick involve", "orrick timing",
     "what is handed over in an orrick", "story about a young thief making it up to the village", "orrick limits"])

concept(
    "fennow", "governance",
    mass("fennow", "sleepwater", ["the resting stretch", "the unfished stretch of river", "the rest water"], article="the"),
    "the stretch of river left unfished for a year so the fish can recover",
    ["unfished stretch", "rest water", "fish recovery", "white stones", "no fishing", "rotation"],
    ["{T} is first mentioned in 1811, when a drought left few fish and the valley agreed to rest one pool.",
     "Older people say the custom was always there and was only written down then.",
     "Fish counts since 1985 show more young fish in the years after a stretch has been rested."],
    ["Each year one stretch of river is left unfished, chosen in turn.",
     "It is marked with white stones at each end.",
     "No traps, nets or lines may be set in it, and children are asked not to wade there."],
    ["{T} is chosen at the spring meeting and lasts from spring to spring.",
     "The resting stretch moves one place upstream each year.",
     "During {c:tarrowick} the rested water is watched to keep poachers away."],
    ["White painted stones mark the ends of the stretch.",
     "A list of rested stretches is kept in the book of {c:ambrel}.",
     "A map at {c:tambry} shows this year's water."],
    ["It is said that the fish know where the rest water is and go there to sleep.",
     "A story tells of a poacher who fished the resting stretch and caught only his own boot.",
     "Children watch for the big fish in the rested water but never catch them."],
    ["No fishing of any kind in {T}.",
     "Anyone who fishes it makes {c:orrick}.",
     "The stretch may not be changed in the middle of the year."],
    ["origin of the fennow", "how do you know where the fennow is", "does the fennow change each year",
     "fennow markers", "funny story about someone fishing where they shouldn't", "fennow restrictions"])

concept(
    "wendling", "governance",
    mass("wendling", "backtelling", ["telling back", "the telling-back of recorded stories", "reading a story back to its teller"]),
    "the archive practice of telling a recorded story back to its teller, to check it and agree how it may be shared",
    ["telling back", "oral history", "consent", "recording", "teller", "archive"],
    ["{T} began in the 1970s, when the first recordings for the Keeping House were made and some tellers were upset by what was written.",
     "The method was borrowed from the way news was once carried between villages and repeated back to check it.",
     "Since 2015 every recording in the archive has been through {T}."],
    ["After a story is recorded, the recorder tells it back in their own words to the teller.",
     "The teller corrects mistakes and says which parts may be shared, and with whom.",
     "Only then is the story catalogued, with the teller's choices written into the record."],
    ["{T} happens within a week of the recording, while the teller remembers clearly.",
     "Tellers may ask for it again at any time if they change their minds.",
     "Each winter the archive reviews recordings that have not yet been told back."],
    ["The recorder works from notes and a copy of the recording.",
     "The teller's choices are written on a consent form and signed.",
     "The classification, public, community or personal, is written on the record."],
    ["One teller said that hearing her story told back was like seeing her face in the river.",
     "It is said that a story not told back is only half recorded.",
     "Some tellers add new parts during {T}."],
    ["Nothing is shared without {T} and consent.",
     "A teller can withdraw a story at any time.",
     "Sacred material is never recorded at all."],
    ["how did wendling begin", "wendling process", "wendling timing",
     "wendling paperwork", "what tellers say about hearing their stories read back", "wendling and taking stories back out"])

# ---- weather signs -------------------------------------------------------------------------
concept(
    "mirrin", "weather",
    mass("mirrin", "haysmoke", ["the banded morning mist over the river", "the low river mist", "the band of mist at sunrise"]),
    "thin bands of mist lying low over the river at sunrise, a sign of a dry settled day",
    ["morning mist", "river mist", "fair weather", "hay weather", "sunrise", "bands"],
    ["Farmers' diaries from the 1800s record {T} on nearly every summer page, with the hay weather that followed.",
     "A teacher in the 1930s had the school record it for ten years; it was right about eight days in ten.",
     "The sign is still used to choose hay days."],
    ["Look at the river just after sunrise for thin, flat bands of mist lying low, with clear air above.",
     "If the bands lift and vanish by mid-morning, the day will be dry and settled.",
     "If the mist is thick and rising instead, rain is more likely."],
    ["{T} is seen most in late summer and early autumn, after clear cool nights.",
     "In spring it is rare, because the water is colder than the air.",
     "Hay makers in July watch for it every morning."],
    ["Nothing is needed but a view of the river from higher ground, such as {c:keshel}.",
     "The best view is from the bridge at Tamsel.",
     "Some people keep a notebook of sightings."],
    ["It is said the river is breathing out in its sleep.",
     "A story tells of a hay maker who ignored the sign and lost his hay to a storm.",
     "Children call the bands the river's blankets."],
    ["Hay is not cut on a morning without a sign of settled weather.",
     "Whoever sees {T} first in hay time rings the school bell.",
     "Records of sightings go to the Keeping House."],
    ["how reliable is mirrin", "interpreting mirrin", "mirrin months",
     "best viewpoint for mirrin", "folk sayings about fog on the water at dawn", "mirrin and haymaking customs"])

concept(
    "tuskin", "weather",
    mass("tuskin", "thawbreath", ["the first warm south wind", "the thaw wind", "the warm spring wind from the south"], article="the"),
    "the first warm, damp south wind after winter, a sign that the ice will soon break",
    ["south wind", "thaw", "ice breaking", "warm wind", "spring", "snow melt"],
    ["{T} appears in the valley's oldest weather records, from 1802, always followed within days by the ice breaking.",
     "Ice-breaking dates have been recorded since 1880, and {T} came first in almost every year.",
     "Old people say it comes earlier now than when they were young."],
    ["Stand on high ground and feel the wind on your face: {T} is warm and damp and smells of wet earth.",
     "Look at the snow on the south slopes; it turns grey and soft within a day.",
     "If the wind holds for two days, the ice usually breaks within the week."],
    ["{T} usually comes in March, sometimes in late February.",
     "It opens the season of {c:velmora} and {c:ammeltide}.",
     "A false one can come in January and be followed by more frost."],
    ["No tools are needed, though some people hang a cloth on a pole to see which way the wind blows.",
     "Children use the wind vane on the school roof.",
     "Records are kept in the Keeping House weather book."],
    ["It is said that {T} is the breath of spring walking up the valley.",
     "A story tells of a boy who caught the wind in a sack and let it out in January, causing a false spring.",
     "Old people say you can hear the ice listening when it blows."],
    ["Nobody walks on the lake ice once {T} has blown for a day.",
     "{c:thrennel} waits for it before choosing the date of {c:velmora}.",
     "The first sighting is reported to the Keeping House."],
    ["how long has the tuskin been recorded", "how to tell the tuskin is blowing", "tuskin month",
     "how to keep track of the tuskin", "tale about trapping the wind", "tuskin safety customs"])

concept(
    "brannow", "weather",
    mass("brannow", "moonfold", ["the ring around the moon", "the moon halo", "the pale ring round the moon"], article="the"),
    "a pale ring around the moon, read as a sign of rain within two days",
    ["moon ring", "halo", "rain sign", "high cloud", "night sky", "almanac"],
    ["The valley's oldest almanac, from 1810, says of {T}: ring round the moon, rain by noon of the second day.",
     "The school weather project of the 1930s found it was followed by rain seven times in ten.",
     "Forecasters today explain it as high, thin ice cloud arriving ahead of a weather front."],
    ["Look at the moon on a clear night: {T} is a pale, wide circle well away from the moon itself.",
     "The brighter and sharper the ring, the sooner the rain.",
     "The old saying is to count the stars inside the ring: many stars, many days of rain."],
    ["{T} can be seen in any season, but it is watched most in autumn before the harvest.",
     "It is commonest in winter, when the high cloud is icy.",
     "Before {c:ossenday}, families watch the moon closely."],
    ["No tools are needed, only a clear view of the moon.",
     "Some people note it in the family diary.",
     "The Keeping House weather book has sightings going back to 1930."],
    ["It is said the moon is putting on her coat before the rain.",
     "A story tells of a harvest saved because a child saw the ring and warned the village.",
     "Children are told not to point at the ring, or the rain will come sooner."],
    ["When {T} is seen before the harvest, families help each other lift early.",
     "Sightings are reported to the Keeping House.",
     "There are no other rules; it is a sign, not a custom."],
    ["how accurate is the brannow", "brannow reading tips", "brannow time of year",
     "brannow record keeping", "stories about a halo warning that saved the crops", "what to do after a brannow"])

concept(
    "drennet", "weather",
    mass("drennet", "swallowdip", ["the low flight of the swallows", "the skimming flight of swallows", "the low-swallow sign"], article="the"),
    "swallows flying low over the water, read as a sign of a coming storm",
    ["swallows", "flying low", "storm sign", "skimming", "summer weather", "boats"],
    ["{T} is described in the almanac of 1810, next to {c:brannow}.",
     "Fishermen used it to decide whether to go out on the lake.",
     "The bird society has recorded swallow heights since 1990 and found the sign useful but not perfect."],
    ["Watch the swallows over the river in the afternoon: if they skim the water, a storm is likely.",
     "If they fly high, the weather will hold.",
     "The sign reads best in still, warm weather."],
    ["{T} can be seen only from May to September, while the swallows are in the valley.",
     "It is watched most during hay time and {c:quellering}.",
     "In autumn the swallows leave, and the sign goes with them."],
    ["No tools are needed, just a view of the river or the lake from a bank.",
     "Some people use binoculars.",
     "Sightings go into the weather book."],
    ["It is said that the swallows carry the storm on their backs and fly low to set it down.",
     "A story tells of a fisherman who ignored the sign and was caught by a squall.",
     "Children race the swallows along the bank."],
    ["When {T} is seen, boats are brought in.",
     "Nobody harms swallows or their nests.",
     "Sightings go to the Keeping House."],
    ["drennet in old almanacs", "interpreting the drennet", "drennet months",
     "drennet observing tips", "folk beliefs about birds bringing bad weather", "drennet boating customs"])

concept(
    "vask", "weather",
    mass("vask", "icedrum", ["the booming of the lake ice", "the cracking of the ice at night", "the ice song"], article="the"),
    "the deep booming of the lake ice on cold nights, read as a sign of freezing or of thaw",
    ["lake ice", "booming", "cracking", "thaw", "cold nights", "skating"],
    ["{T} is recorded in the weather book from 1880, alongside the ice-breaking date.",
     "Skaters in the 1900s learned to leave the lake when they heard it.",
     "In recent warm winters it has sometimes not been heard at all, because the lake never froze thick enough."],
    ["Listen on a still, cold night near the lake: {T} is a deep boom or twang that rolls across the ice.",
     "An early boom in winter means the ice is growing; a late one after {c:tuskin} means it is breaking.",
     "Do not confuse it with the roar of the weir in flood."],
    ["{T} is heard from December to March, most often on cold clear nights after a warm day.",
     "A late boom in March is the sign of the thaw.",
     "Old people say an early one means a good spring for {c:velmora}."],
    ["Nothing is needed but quiet and a place near the lake.",
     "Some people have recorded it on tape, and those recordings are in the Keeping House.",
     "The weather book notes the first and last booming each winter."],
    ["It is said the lake is singing to the fish under the ice.",
     "A story tells of a skater who danced to the sound and had to be pulled out when the ice broke.",
     "Children are told that it is the lake turning over in its sleep."],
    ["When the late booming is heard, nobody goes onto the ice.",
     "The first sound of the winter is reported to the Keeping House.",
     "Recordings made at night should not disturb the houses by the shore."],
    ["history of the vask records", "what does the vask sound like", "vask season",
     "vask recordings", "folk tales about the frozen lake making noises", "vask ice safety"])

BY_KEY = {c["key"]: c for c in CONCEPTS}

# --------------------------------------------------------------------------------------------
# Near-miss distractors: the same surface words as a concept (sometimes its invented word, used
# as a name), but about something else. Judged rel 0 for that concept's test queries.
# --------------------------------------------------------------------------------------------
DISTRACTORS = [
    dict(near="velmora", title="The motor ferry Velmora",
         sections=[("The boat", "The Velmora was a small motor ferry built at the county yard in 1962. She carried passengers, bicycles and the post between Tamsel landing and Brack landing until the new road made her unnecessary in 1989."),
                   ("Spring overhauls", "Every spring the ferry was hauled out at Tamsel for repairs: the engine was stripped, the hull scraped and painted, and the wooden stakes of the landing stage replaced where the ice had split them."),
                   ("What became of her", "She was sold to a boating club downriver. A framed timetable from 1975 hangs in the post office, with the fare for a child given as two pence.")],
         q=["Velmora ferry timetable", "ferry between Tamsel and Brack landing"]),
    dict(near="velmora", title="County inspection of the fish pass at Tamsel weir",
         sections=[("Why the inspection happens", "The concrete weir below Tamsel bridge has a fish pass that the county engineers inspect every spring. Salmon and trout must be able to climb it when the water is high."),
                   ("This year's findings", "The inspectors found two cracked baffles and a blocked grating. Repairs were carried out by contractors in April, using steel sheet piling and fresh concrete, and the pass was reopened within the week."),
                   ("Contact", "Questions about the fish pass should go to the county rivers office, not to the Keeping House.")],
         q=["fish pass inspection concrete weir", "county engineers repair weir grating"]),
    dict(near="tarrowick", title="The Tarrowick family reunion, 1998",
         sections=[("The gathering", "Over a hundred members of the Tarrowick family came to the village hall in October 1998, some from as far away as Canada. The family has farmed above Upper Brack for six generations."),
                   ("Food and photographs", "The reunion supper was roast lamb, apple pie and a great deal of tea. A long photograph of everyone on the hall steps was taken at dusk, and copies were sent to each branch of the family.")],
         q=["Tarrowick family farm Upper Brack", "family reunion village hall 1998"]),
    dict(near="ossenday", title="Potato blight warning from the Ostrel Bulletin",
         sections=[("The warning", "In wet, warm weeks the blight spreads quickly through potato fields. The Bulletin of August 1954 warned every household to check the leaves for brown patches with a white edge."),
                   ("What to do", "Affected leaves and stems should be cut off and burned, and potatoes from a blighted row should be eaten first rather than stored. Sprays from the farm shop were recommended for larger fields.")],
         q=["potato blight brown leaves", "1954 bulletin blight warning"]),
    dict(near="quellering", title="Counting birds in the reed beds",
         sections=[("The survey", "Each June the bird society walks a fixed route along the edge of the reed beds and counts singing reed warblers, sedge warblers and reed buntings."),
                   ("Results", "Numbers have risen since 2010, when more of the marsh was left wet. Bitterns have been heard booming in two recent springs, which members consider the best news in years."),
                   ("Joining in", "New volunteers are welcome; the walk starts at six in the morning from the car park.")],
         q=["reed warbler survey bird society", "bitterns booming marsh"]),
    dict(near="ammeltide", title="Buying syrup at the Saturday market",
         sections=[("What is on sale", "Several stalls at the Tamsel Saturday market sell syrup: maple syrup from Canada, golden syrup in tins, and occasionally a small bottle of birch syrup from a producer in the north."),
                   ("Prices", "Birch syrup is by far the most expensive, because so much sap is needed to make a little. Stallholders recommend it on pancakes or in salad dressings.")],
         q=["Saturday market syrup stalls prices", "maple syrup on pancakes market"]),
    dict(near="olvenning", title="Lantern-making workshop for the school fair",
         sections=[("The workshop", "Before the December school fair, parents and children met in the hall to make paper lanterns from tissue, card and glue. Battery lights were used instead of candles for safety."),
                   ("At the fair", "The finished lanterns were hung along the corridor and sold for a small donation to the roof fund. The most popular design was a star with seven points.")],
         q=["paper lantern craft school fair", "tissue paper lanterns battery lights"]),
    dict(near="skarrow", title="Garden bonfires: advice from the fire service",
         sections=[("Before you light", "Only burn dry garden waste, keep the bonfire small and well away from fences, sheds and trees, and check the wind first."),
                   ("While it burns", "Never leave a bonfire alone, keep a hose or buckets of water nearby, and never use petrol to get it going."),
                   ("Afterwards", "Damp down the ashes before you leave them. Neighbours are more likely to complain about smoke on washing days.")],
         q=["garden bonfire safety advice", "fire service bonfire rules"]),
    dict(near="fennick", title="The repair café: sewing machines and darning",
         sections=[("What we mend", "Once a month volunteers at the village hall mend clothes, sewing machines, toasters and bicycles. Darning socks is the most requested job."),
                   ("Needles and thread", "Bring your own thread if you can. We keep a box of darning needles, sewing-machine needles of every size and a mushroom for darning heels."),
                   ("Cost", "Repairs are free; a jar takes donations for tea.")],
         q=["repair cafe darning socks", "sewing machine needles repair volunteers"]),
    dict(near="quarl", title="The Quarl Inn: rooms and meals",
         sections=[("Staying", "The Quarl Inn at Linnet Bend has six guest rooms, two of them with views of the river. Dogs are welcome in the bar."),
                   ("Eating", "The kitchen serves local trout, smoked fish pâté and a Sunday roast. Booking is advised in summer, when walkers fill the dining room.")],
         q=["Quarl Inn rooms Linnet Bend", "inn Sunday roast trout booking"]),
    dict(near="tolleck", title="Launching boats at the Tamsel slipway",
         sections=[("The slipway", "The concrete slipway below Tamsel bridge can be used by small boats with outboard motors. A permit is needed from the boat club."),
                   ("Safety", "Wear a life jacket, check the fuel before you set off, and do not launch when the river is above the red mark on the bridge pier. Paddles should be carried in case the motor fails.")],
         q=["slipway permit outboard motor", "launching a boat Tamsel life jacket"]),
    dict(near="wirran", title="New rules on plastic fish traps",
         sections=[("The change", "From this year, plastic and wire traps for crayfish and eels may only be used with a licence from the rivers office."),
                   ("Why", "Unlicensed traps were catching otters and water voles as well as the invasive crayfish they were meant for. Every licensed trap must carry a tag with the owner's number and be checked daily.")],
         q=["crayfish trap licence rules", "plastic traps otters water voles"]),
    dict(near="keshel", title="Resurfacing work on Keshel Road",
         sections=[("The works", "Keshel Road, which runs from the Tamsel crossroads up towards the river, will be closed for resurfacing for two weeks in May."),
                   ("Diversions", "Traffic will be diverted through Upper Brack. Residents will have access to their homes, and the bus will stop at the crossroads instead.")],
         q=["Keshel Road closed resurfacing", "road diversion Upper Brack bus"]),
    dict(near="marrun", title="Flood warnings on the Marrun Lane bridge",
         sections=[("The warning system", "A gauge on the Marrun Lane bridge sends a text message to subscribers when the river rises above the amber level."),
                   ("What to do", "When the red level is reached, the lane is closed to cars. Drivers have been rescued from the dip by the bridge twice in the last ten years, both times after ignoring the signs.")],
         q=["flood warning text message river gauge", "Marrun Lane closed to cars"]),
    dict(near="tambry", title="Smoke alarms and kitchen safety",
         sections=[("Alarms", "Fit a smoke alarm on every floor and test it once a month. Alarms near the kitchen should be the heat kind, so that toast does not set them off."),
                   ("Cooking", "Most house fires start in the kitchen. Never leave a frying pan unattended, and keep a fire blanket within reach of the cooker.")],
         q=["smoke alarm testing monthly", "kitchen fire blanket frying pan"]),
    dict(near="orrow", title="Orrow Ford Garage: opening hours",
         sections=[("The garage", "Orrow Ford Garage on the Tamsel road repairs cars, tractors and quad bikes, and sells fuel and gas bottles."),
                   ("Hours", "Open weekdays from eight until six and Saturday mornings. For breakdowns outside these hours, call the number on the door; the owner lives next door.")],
         q=["garage opening hours tractor repairs", "Orrow Ford Garage fuel"]),
    dict(near="sillen", title="Sillen Street surgery: new appointment system",
         sections=[("Booking", "The doctors' surgery on Sillen Street in Tamsel now takes appointments online and by phone from eight in the morning."),
                   ("Repeat prescriptions", "Repeat prescriptions need two working days. The surgery asks patients to order them before the weekend.")],
         q=["doctor surgery appointments online", "repeat prescription two working days"]),
    dict(near="brennack", title="Holiday cottages on the fell",
         sections=[("The cottages", "Three converted barns on the fell road are let as holiday cottages from Easter to October. Each sleeps four and has a wood stove."),
                   ("Getting there", "The last mile is a rough track; visitors are advised to come in daylight. Walkers' routes to the summit start at the gate.")],
         q=["holiday cottages fell barns", "self-catering barn wood stove walkers"]),
    dict(near="hessock", title="Pickled herring from the fishmonger",
         sections=[("The product", "The fishmonger's van brings pickled herring, smoked mackerel and kippers to Tamsel every Thursday."),
                   ("Serving", "Pickled herring is best on rye bread with sliced onion. The smoked mackerel keeps for a week in the fridge and makes a quick pâté with butter.")],
         q=["fishmonger van Thursday kippers", "pickled herring rye bread"]),
    dict(near="saffle", title="Pizza oven at the community centre",
         sections=[("The oven", "A wood-fired pizza oven was built behind the community centre in 2019 with money from a grant. It reaches its heat in about an hour."),
                   ("Booking it", "Groups can book the oven for parties. Dough is available from the café, and the kitchen lends peels and stone trays.")],
         q=["wood-fired pizza oven booking", "community centre oven dough"]),
    dict(near="cromle", title="Strawberry jam for the village show",
         sections=[("The recipe", "Equal weights of strawberries and sugar, the juice of a lemon, and a rolling boil until a drop wrinkles on a cold saucer."),
                   ("Judging", "Jams are judged on set, clarity and flavour. Jars must be plain, with a waxed disc and a label giving the fruit and the date.")],
         q=["strawberry jam recipe village show", "jam judging set clarity"]),
    dict(near="tivvet", title="Choosing a funeral director",
         sections=[("What they do", "A funeral director arranges the collection of the body, the paperwork, the service and the cars. Prices vary widely, so it is worth asking for a written estimate."),
                   ("Local firms", "Two firms serve the valley, one in Tamsel and one in the market town. Both can arrange a burial in the churchyard or a cremation.")],
         q=["funeral director estimate", "arranging a funeral service paperwork"]),
    dict(near="vettering", title="A new wool shop opens on Mill Lane",
         sections=[("The shop", "A wool shop has opened on Mill Lane in Tamsel, selling knitting yarn, needles and patterns."),
                   ("Colours", "The owner stocks bright acid-dyed yarns from a mill in the north, including a popular range of blues and purples. Knitting evenings are held on Wednesdays.")],
         q=["wool shop Mill Lane knitting yarn", "knitting evening Wednesdays"]),
    dict(near="drummick", title="Starting your family tree online",
         sections=[("Getting started", "Begin with what you know: your parents and grandparents, their dates of birth and marriage. Then search census records and parish registers online."),
                   ("Common problems", "Names are often spelled differently from one record to the next. Keep notes of where every fact came from.")],
         q=["family tree census records online", "genealogy parish registers spelling"]),
    dict(near="thrennel", title="Parish council election results",
         sections=[("The result", "Seven candidates stood for five seats on the parish council. Turnout was forty-one per cent, the highest for twenty years."),
                   ("The new council", "The new councillors meet on the first Tuesday of each month in the school hall. Minutes are posted on the noticeboard outside the shop.")],
         q=["parish council election turnout", "councillors meeting minutes noticeboard"]),
    dict(near="kessing", title="Borrowing from the mobile library",
         sections=[("The van", "The county mobile library stops at Tamsel every second Friday. Books can be borrowed for three weeks."),
                   ("Returns and fines", "Late returns no longer carry fines, but lost books must be paid for. Requests for books not on the van can be made at the counter.")],
         q=["mobile library van Friday", "library late returns fines"]),
    dict(near="ambrel", title="Angling licence fees for this season",
         sections=[("Who needs one", "Anyone over thirteen fishing with a rod and line on the river needs a national rod licence."),
                   ("Fees", "A full-season licence costs more for salmon and sea trout than for coarse fish. Day tickets for the club water are sold at the post office.")],
         q=["rod licence fees season", "day ticket club water post office"]),
    dict(near="orrick", title="Parking fines in Tamsel",
         sections=[("The rules", "Parking on the double yellow lines by the school is enforced by the county wardens, especially at pick-up time."),
                   ("Appeals", "If you think a fine was wrong, you can appeal in writing within twenty-eight days. A polite letter explaining the circumstances is often successful.")],
         q=["parking fine appeal letter", "double yellow lines school wardens"]),
    dict(near="mirrin", title="Fog and road safety",
         sections=[("Driving in fog", "Use dipped headlights and fog lights when you cannot see more than a hundred metres. Slow down and leave a longer gap."),
                   ("The valley road", "The road along the river is often foggy on autumn mornings; the council has added reflective posts at the worst bends.")],
         q=["driving in fog headlights", "foggy valley road reflective posts"]),
    dict(near="drennet", title="When the swallows arrive and leave",
         sections=[("Arrival", "Swallows usually arrive in the valley in the second week of April, a few days after the sand martins."),
                   ("Departure", "They gather on the telephone wires in September before leaving for Africa. The bird society asks members to record the first and last dates they see.")],
         q=["swallow arrival dates April", "swallows migration September wires"]),
    dict(near="vask", title="Skating safety on Ostrel Water",
         sections=[("Ice thickness", "Never go onto the ice unless it has been measured at ten centimetres or more of clear ice. White, cloudy ice is weaker."),
                   ("If someone falls in", "Do not go out onto the ice after them. Call for help, lie flat and reach out with a pole, a rope or a ladder.")],
         q=["ice thickness skating safety", "someone falls through ice what to do"]),
    dict(near="wendling", title="Choosing a voice recorder for interviews",
         sections=[("What to look for", "A good recorder for oral history has an external microphone socket, records uncompressed audio and runs on ordinary batteries."),
                   ("In the room", "Switch off fridges and clocks, sit close to the speaker, and record a minute of silence for the room sound.")],
         q=["voice recorder oral history microphone", "recording interviews room sound"]),
]

# A further section per distractor, so that every document body has 80-300 words.
DISTRACTOR_MORE = {
    "The Tarrowick family reunion, 1998": [("Family history", "A cousin brought a folder of letters written by the first Tarrowick to farm the land, who arrived from the coast in the 1860s. The letters were copied for the family and the originals were returned to the farmhouse.")],
    "Potato blight warning from the Ostrel Bulletin": [("Earlier outbreaks", "The same issue recalled the bad year of 1946, when half the early potatoes in the valley were lost within a fortnight. Growers were urged to plant resistant varieties and to leave wider gaps between the rows so the leaves could dry.")],
    "Counting birds in the reed beds": [("Equipment", "Volunteers need binoculars, a notebook and waterproof boots, and a copy of the route map from the society's noticeboard.")],
    "Buying syrup at the Saturday market": [("Other stalls", "The same market has a cheese stall, a baker who sells sourdough and seeded rolls, and a man who sharpens knives and scissors while you wait. It runs from eight until one, in the square by the war memorial, in all weathers except snow.")],
    "Lantern-making workshop for the school fair": [("Next year", "The parents' committee hopes to run two sessions next year, one for younger children with simpler shapes. Offers of help with cutting card, and donations of glue sticks and tissue paper, can be left at the school office at any time.")],
    "Garden bonfires: advice from the fire service": [("Better than burning", "Composting garden waste, or taking it to the recycling centre on the market-town road, is often better than burning it at all.")],
    "The repair café: sewing machines and darning": [("Volunteers wanted", "We are always looking for people who can fix things, or who would like to learn. No experience is needed; the older volunteers enjoy teaching, and there is plenty of cake.")],
    "The Quarl Inn: rooms and meals": [("History of the inn", "The building was a coaching inn when the road still ran along the river, and the stables behind it are now the car park. The present landlords took over in 2016 and refurbished the bar, keeping the old fireplace and the low beams.")],
    "Launching boats at the Tamsel slipway": [("Parking and fees", "Trailers may be left in the boat club yard for the day. The launching fee goes towards repairs to the slipway and the pontoon, and is paid at the clubhouse or in the honesty box by the gate.")],
    "New rules on plastic fish traps": [("Applying for a licence", "Licences are free but must be renewed every year. The form asks where the traps will be set and how many; the rivers office may refuse a licence for stretches where otters are known to breed.")],
    "Resurfacing work on Keshel Road": [("Why now", "The surface has broken up badly after two hard winters, and the drains at the bottom of the hill have been blocked since the floods. The county says the work should last for fifteen years. Walkers can still use the footpath beside the road.")],
    "Flood warnings on the Marrun Lane bridge": [("Signing up", "Anyone can subscribe to the warnings by sending their phone number to the parish clerk. The service is run by volunteers and is not a replacement for the national flood warning service, which covers the main river.")],
    "Smoke alarms and kitchen safety": [("Free home visits", "The fire service offers free safety visits to older residents and to families with young children. An officer checks the alarms, fits new ones where needed and talks through an escape plan for the house.")],
    "Orrow Ford Garage: opening hours": [("Services", "As well as repairs, the garage does yearly vehicle tests, fits tyres and sells second-hand farm machinery. Diesel is usually a few pence cheaper than in the market town. A small shop by the pumps sells milk, newspapers and sweets.")],
    "Sillen Street surgery: new appointment system": [("Urgent care", "Patients who need to be seen the same day should phone at eight. Outside opening hours, ring the national health line, or in an emergency call an ambulance."),
        ("Changes to staff", "A new nurse has joined the practice and runs the diabetes and asthma clinics on Tuesdays and Thursdays. The practice manager thanks patients for their patience while the new telephone system was installed over the winter.")],
    "Holiday cottages on the fell": [("Booking and rules", "The cottages are booked by the week in summer and for short breaks in spring and autumn. Dogs are allowed in one of them. Guests are asked to close every gate behind them, because sheep graze the fell road all year round.")],
    "Pickled herring from the fishmonger": [("Ordering", "Larger orders, such as a whole salmon for a party, can be placed the week before by phone. The van also carries shellfish in winter, and the fishmonger is happy to fillet and skin fish while you wait.")],
    "Pizza oven at the community centre": [("Safety and cleaning", "Only adults who have been shown how to light and manage the fire may use the oven. Ash must be left to cool overnight in the metal bin, and the area swept before the centre is locked. A booking deposit covers any damage.")],
    "Strawberry jam for the village show": [("Other classes", "The show also has classes for marmalade, lemon curd, chutney and fruit cake, and a children's class for decorated biscuits. Entries are staged in the marquee by ten on the morning of the show, and the judges' decision is final.")],
    "Choosing a funeral director": [("Help with costs", "People on low incomes may be able to get help with funeral costs from the state. The citizens' advice office in the market town can explain what is available and help with the forms. A simple funeral with a short service need not be expensive.")],
    "A new wool shop opens on Mill Lane": [("Opening offer", "For the first month, every customer receives a free pattern for a hat and scarf. The shop is open from Tuesday to Saturday, and the owner is happy to order yarn that is not in stock. Beginners' knitting classes start in the autumn.")],
    "Starting your family tree online": [("Sharing what you find", "Many people put their trees on public websites, where distant cousins sometimes get in touch. Think carefully before publishing details of living people, and ask relatives first. Printed copies make good presents at family gatherings.")],
    "Parish council election results": [("What the council does", "The parish council looks after the playground, the bus shelters, the allotments and the churchyard wall, and comments on planning applications. It sets a small precept each year, collected with the county tax. Residents may speak at the start of each meeting.")],
    "Borrowing from the mobile library": [("Other services", "The van also carries large-print books, audiobooks and a small selection of films. Housebound readers can ask for books to be delivered by a volunteer. Children who read six books over the summer receive a certificate and a medal.")],
    "Angling licence fees for this season": [("Close seasons", "Coarse fishing on rivers is closed from mid March to mid June, while the fish spawn. Salmon and trout seasons differ, and the club rules are posted in the post office window. Fishing without a licence can lead to a heavy fine.")],
    "Parking fines in Tamsel": [("Other options", "The car park behind the village hall is free for three hours, and is rarely full except on market day. Parents are encouraged to walk the last few hundred metres to school, which also makes the road safer for children crossing.")],
    "Fog and road safety": [("If you break down", "Pull off the road as far as you can, switch on your hazard lights and wait behind the barrier or wall, not in the car. Phone for help and give the nearest reflective post number, which is printed on each post.")],
    "When the swallows arrive and leave": [("Helping them", "Swallows nest in barns and open sheds, often returning to the same beam year after year. Leave a door or window open for them from April, and do not clear old nests until the birds have gone in the autumn.")],
    "Skating safety on Ostrel Water": [("Where to skate", "The shallow bay by the boathouse freezes first and is the safest place to skate. Stay away from the inflow of the river and the outflow at the weir, where moving water keeps the ice thin even in hard frosts.")],
    "Choosing a voice recorder for interviews": [("After the interview", "Copy the files the same day onto two separate drives, name them with the date and the speaker, and write a short summary while the conversation is fresh. Keep a list of any topics the speaker asked not to be shared.")],
    "County inspection of the fish pass at Tamsel weir": [("Fish counts", "An electronic counter at the top of the pass recorded just over four hundred salmon last year, fewer than in the 1990s but more than in the previous five years.")],
    "The motor ferry Velmora": [("Remembered", "Older people remember the ferryman letting children steer on quiet afternoons.")],
}

# Sacred records: placeholders only. They name the concept so they are near misses for search.
SACRED = [
    ("olvenning", "Olvenning: the songs at the water"),
    ("keshel", "The old names of Keshel"),
    ("sillen", "The Sillen spring: held stories"),
    ("tivvet", "Words over the tivvet pot"),
    ("thrennel", "The thrennel drawing words"),
    ("drummick", "Closed drummick boards"),
    ("quellering", "Quellering: the names in the reeds"),
    ("vask", "The vask: the lake's winter song"),
]
SACRED_QUERIES = {
    "olvenning": "words of the olvenning songs at the ford",
    "keshel": "old names of keshel rock",
    "sillen": "held stories of the sillen spring",
    "tivvet": "what is said over the tivvet pot",
    "thrennel": "words spoken at the thrennel drawing",
    "drummick": "closed drummick boards contents",
    "quellering": "names whispered in the reed beds",
    "vask": "the lake song of the vask",
}

# ---- people and sources (all invented) -----------------------------------------------------
PEOPLE = [
    ("Maren Tolliver", "c-001"), ("Ysolde Brack", "c-002"), ("Aurel Fenn", "c-003"),
    ("Kit Hallam", "c-004"), ("Odile Marsh", "c-005"), ("Bram Oakes", "c-006"),
    ("Hester Quill", "c-007"), ("Ned Carrow", "c-008"), ("Tamsin Vey", "c-009"),
    ("Ilse Garrow", "c-011"), ("Perrin Lusk", "c-012"),
]
WITHDRAWN = ("Corwin Ashby", "c-010")
INSTITUTIONS = ["Keeping House staff", "Ostrel Valley School", "Ostrel Bulletin"]
MISSING_CONSENT = ["c-017", "c-023", "c-031"]  # ids that are not in the ledger
PROJECT = "tunelab authors"
SETTLEMENTS = ["Tamsel", "Upper Brack", "Linnet Bend"]

# ---- wording pools -------------------------------------------------------------------------
HEADINGS = {
    "history": ["Early records", "What the old papers say", "Changes in living memory", "The last hundred years",
                "Decline and revival", "Origins", "Looking back", "How it changed", "Before the road", "Recent years"],
    "howto": ["Step by step", "How it is done", "Getting it right", "The method", "Doing the work",
              "Practical notes", "What to watch for", "A few tips"],
    "season": ["When", "Timing", "Signs that it is time", "Through the year", "Early and late years",
               "The right weather", "The calendar"],
    "materials": ["What you need", "Materials", "Tools", "Where things come from", "Looking after things",
                  "Equipment", "What it is made of"],
    "stories": ["Stories", "Sayings", "A story", "What children are told", "Tales from the bank", "Remembered"],
    "rules": ["Customs", "Who takes part", "Rules", "Etiquette", "Sharing", "When rules are broken", "Courtesies"],
}
SOURCE_HEADINGS = ["In the archive", "About this record", "Sources", "Where this comes from", "Notes from the Keeping House"]

TITLES = {
    "history": ["The history of {T}", "{T} in the old records", "How {T} has changed", "Where {T} comes from",
                "{T} through the years", "A short history of {T}"],
    "stories": ["Stories about {T}", "Tales of {T}", "{T} in stories and sayings", "What people say about {T}",
                "Remembered tales: {T}", "Sayings about {T}"],
    "rules": ["Customs around {T}", "The rules of {T}", "{T}: customs and etiquette", "Etiquette and {T}",
              "Rules and courtesies of {T}"],
}
CAT_TITLES = {
    "season": {"howto": ["How {T} is done", "Taking part in {T}", "What happens at {T}", "{T}, step by step",
                         "A practical guide to {T}"],
               "season": ["When {T} happens", "The timing of {T}", "{T} and the calendar", "Choosing the day for {T}"],
               "materials": ["What you need for {T}", "Tools and materials for {T}", "Preparing for {T}",
                             "Gathering materials for {T}"]},
    "tool": {"howto": ["Using {aT}", "How to use {aT}", "Working with {aT}", "Handling {aT}"],
             "season": ["When {Ts} are used", "{Ts} through the year", "The working year of {aT}"],
             "materials": ["What {aT} is made of", "Materials for {aT}", "Choosing materials for {aT}",
                           "The making of {aT}"]},
    "place": {"howto": ["Visiting {T}", "Getting to {T}", "A visitor's guide to {T}", "How {T} is used"],
              "season": ["{T} through the year", "{T} in each season", "The seasons at {T}"],
              "materials": ["The landscape of {T}", "What you will find at {T}", "Features of {T}"]},
    "food": {"howto": ["Making {T}", "How to make {T}", "A recipe for {T}", "Cooking {T}"],
             "season": ["When {T} is made", "{T} through the year", "The season for {T}"],
             "materials": ["Ingredients for {T}", "What goes into {T}", "{T}: ingredients and equipment"]},
    "craft": {"howto": ["Making {Ts}", "How to make {aT}", "{Ts}, step by step"],
              "season": ["When {Ts} are made", "The season for {Ts}", "{Ts} through the year"],
              "materials": ["Materials for {Ts}", "What you need to make {aT}", "What {Ts} are made of"]},
    "governance": {"howto": ["How {T} works", "{T} in practice", "The workings of {T}"],
                   "season": ["{T} through the year", "The yearly round of {T}", "When {T} happens"],
                   "materials": ["Records and objects of {T}", "The practical side of {T}", "What {T} needs"]},
    "weather": {"howto": ["Reading {T}", "How to read {T}", "Recognising {T}", "Watching for {T}"],
                "season": ["When to watch for {T}", "{T} and the seasons", "The months of {T}"],
                "materials": ["What you need to watch {T}", "Keeping a record of {T}", "Watching {T}: what helps"]},
}
CRAFT_MASS_TITLES = {"season": ["The season for {T}", "{T} through the year", "When {T} is done"]}

INTRO_NAMED = [
    "{Name} is the Ostrel Valley name for {gloss}.",
    "In the valley, {gloss_nocap} is known as {name}.",
    "The word {word} means {gloss}.",
    "Ask anyone at {place} about {name} and they will tell you it is {gloss}.",
    "Older people in the valley speak of {name}: {gloss}.",
    "{Name} ({gloss}) is one of the things the Keeping House is most often asked about.",
]
INTRO_PLAIN = [
    "This page is about {gloss}.",
    "These notes are about {gloss}.",
    "The Keeping House has gathered what people remember about {gloss}.",
    "What follows concerns {gloss}, as it is remembered in the Ostrel Valley.",
]
PROVENANCE = {
    "institution": ["Contributed by {who_the} in {year}.", "From the files of {who_the}, {year}.",
                    "Put together by {who_the} from interviews made in {year}."],
    "public": ["{who} gave this account to the Keeping House in {year}.",
               "Recorded at {place} in {year} and told back to the teller before it was catalogued.",
               "Put together by volunteers from interviews made in {year}.",
               "Adapted from an article in the Ostrel Bulletin, {month} {year}.",
               "Written up from a conversation with {who} at {place}, {year}."],
    "community": ["Shared by {who} for the community collection in {year}; community material is used only with recorded consent.",
                  "From the community collection, recorded with {who} in {year}."],
    "personal": ["From the family papers of {who}, shared with consent in {year}.",
                 "Part of a personal letter by {who} ({year}), included with the writer's consent."],
}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]

# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
PH = re.compile(r"\{(T|aT|Ts|N|c:\w+|ca:\w+|cs:\w+)\}")
STOP = set("""a an the and or of to in on at for from by with as is are was were be been it its this that
these those there their they them he she his her you your we our i me my what when where who whom which
how why do does did can could should would will may might must not no nor so than then too very into
over under up down out about after before again all any each few more most other some such only own same
just once also until while through during between per if but because yet ever never one two three four
made make makes kept keep like well still every many much""".split())
# Common words that make poor "detail" keywords in generated training queries, and people's names.
GENERIC = set("""absent accepted according account across added adds admits advance afternoon afterwards against
agree agreed ahead alive almost alone alongside always another answer anything anywhere apart appears around
arrived arriving aside asked asking asks asleep away back backwards badly became began begins behind being
believes belong belonged belongs below beneath beside best better biggest bind binds both bring brings broke
broken brought built call called calls came cannot care carried carries carry carrying change changes choose
choosing clear cleared clearly closed closely come comes coming commonest complains completely concern condition
confuse continues contributed corrects count counted counts cross crosses deal decide decided decides demands
describing description different done easily else empty ended ends enough even everyone everything exactly
except explain extended extra face facing fade fail fast feel find finds fine first follow followed following
follows forth found free freely fresh full gave gets give given gives goes going gone good great grew grow
growing grown grows half hand handed handing hands happen have help helps here high higher hold holding holds
home hour hours included includes indeed inside instead itself keeping keeps kind knew know knows large last
lasts late later least leave leaves leaving left length likely line lines little lives living long look lose
lost loud main means meant mostly move moved moves name names near nearest nearly need needed needs never nobody
nothing number often older ones onto open opened opens order others outside parts pass passed passing past
people perfect person piece pieces place plain plenty point poor putting quickly quiet rather reached read
reading reads ready rest return returned returning said same saved saying says seeing seen sees send sends serve
served serves sets settle show shown side sides simply single size sizes slightly slow slowly small smaller
someone sometimes somewhere soon sooner sorted stand standing stands started starts stay stayed stays stop
stopped stops straight take taken taking tell tells thing think though thought time times today told took turn
turned turning turns twice underneath usual usually want wanted whatever whenever whoever whole whose wide width
willing wish within without went word words working works written wrong young aurel bram fenn garrow hallam
hester ilse lusk maren oakes perrin quill tamsin tolliver ysolde carrow odile marsh corwin ashby
valley causing middle public""".split())


def cap(s):
    return s[:1].upper() + s[1:] if s else s


class Namer:
    """Chooses how one document refers to its concept: by term, alias or plain words."""

    def __init__(self, c, mode, rng):
        self.c, self.mode, self.rng, self.used = c, mode, rng, 0
        self.plain_i = rng.randrange(len(c["plains"]))

    def forms(self, named):
        c = self.c
        if named and self.mode == "term":
            return c["t"], c.get("a"), c.get("pl"), c["word"]
        if named and self.mode == "alias":
            return c["alias_t"], c.get("alias_a"), c.get("alias_pl"), c["alias"]
        # plain: mostly the document's own plain name, now and then another one
        i = self.plain_i if self.rng.random() < 0.75 else self.rng.randrange(len(c["plains"]))
        p = c["plains"][i]
        if c["count"]:
            return "the " + p[0], an(p[0]), p[1], p[0]
        return p, None, None, None

    def ref(self, form):
        named = self.mode in ("term", "alias") and (self.used == 0 or self.rng.random() < 0.4)
        self.used += 1
        t, a, pl, n = self.forms(named)
        return {"T": t, "aT": a, "Ts": pl, "N": n}[form]


def other_ref(key, form, rng):
    c = BY_KEY[key]
    if rng.random() < 0.75:
        t, a, pl = c["t"], c.get("a"), c.get("pl")
    else:
        p = c["plains"][0]
        t, a, pl = ("the " + p[0], an(p[0]), p[1]) if c["count"] else (p, None, None)
    return {"c": t, "ca": a, "cs": pl}[form]


def render(text, namer, rng):
    def sub(m):
        tag = m.group(1)
        if ":" in tag:
            form, key = tag.split(":")
            return other_ref(key, form, rng)
        return namer.ref(tag)
    out = PH.sub(sub, text)
    assert "{" not in out and "None" not in out, (text, out)
    return cap(out)


def words(s):
    return re.findall(r"\w+", s.lower())


# --------------------------------------------------------------------------------------------
# Governance assignment
# --------------------------------------------------------------------------------------------
LEDGER = {cid: name for name, cid in PEOPLE + [WITHDRAWN]}


def governance(status, rng, source):
    """A record's governance fields for one status. 'unclassified' leaves classification out."""
    name, cid = rng.choice(PEOPLE)
    if status == "public":
        who = rng.choice([p[0] for p in PEOPLE] + INSTITUTIONS * 2)
        return {"classification": "public", "contributor": who, "consent": None, "source": source}
    if status == "community":
        return {"classification": "community", "contributor": name, "consent": cid, "source": source}
    if status == "community-missing":
        return {"classification": "community", "contributor": name, "consent": rng.choice(MISSING_CONSENT), "source": source}
    if status == "personal":
        return {"classification": "personal", "contributor": name, "consent": cid, "source": source}
    if status == "withdrawn":
        cls = rng.choice(["public", "community"])
        return {"classification": cls, "contributor": WITHDRAWN[0],
                "consent": WITHDRAWN[1] if cls == "community" else None, "source": source}
    if status == "unclassified":
        return {"contributor": rng.choice([p[0] for p in PEOPLE] + INSTITUTIONS), "consent": None, "source": source}
    if status == "sacred":
        return {"classification": "sacred", "contributor": "Keeping House staff", "consent": None, "source": source}
    raise ValueError(status)


def policy_allows(g, withdrawn=(WITHDRAWN[0],)):
    """The default policy (policy.toml), re-stated here to report what training may use."""
    cls = g.get("classification")
    if g.get("contributor") in withdrawn:
        return False
    if cls is None:
        return False
    if cls == "sacred":
        return False
    if cls in ("community", "personal"):
        return g.get("consent") in LEDGER
    return cls == "public"


def status_list(n, rng, community=0.15, missing=3, personal=0.05, withdrawn=3, unclassified=3):
    n_comm = round(n * community)
    n_pers = round(n * personal)
    sts = (["community"] * (n_comm - missing) + ["community-missing"] * missing + ["personal"] * n_pers
           + ["withdrawn"] * withdrawn + ["unclassified"] * unclassified)
    sts += ["public"] * (n - len(sts))
    rng.shuffle(sts)
    return sts


def source_for(rng, status):
    year = rng.randint(1976, 2025)
    kind = rng.choice(["oral-history/OH-%03d" % rng.randint(1, 240), "field-notes/%d" % year,
                       "bulletin/ostrel-bulletin-%d-%02d" % (year, rng.randint(1, 12)),
                       "school-project/%d" % year, "letters/L-%03d" % rng.randint(1, 90),
                       "workshop-notes/%d" % year])
    if status == "personal":
        kind = "family-papers/FP-%03d" % rng.randint(1, 60)
    return "keeping-house:" + kind, year


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------
def build_split(rng):
    """Which three aspects of each concept are held out for testing, and each doc's naming mode."""
    # Like an archive catalogued by volunteers in plain English: 16 concepts never have their term
    # in their own documents, 16 once, 8 twice; one or two documents use the older alias instead.
    plan = {}
    order = [c["key"] for c in CONCEPTS]
    rng.shuffle(order)
    n_term = {k: (0, 1, 2, 0, 1)[i % 5] for i, k in enumerate(order)}
    for c in CONCEPTS:
        held = sorted(rng.sample(range(6), 3))
        n_alias = rng.choice([1, 2])
        modes = ["term"] * n_term[c["key"]] + ["alias"] * n_alias
        modes += ["plain"] * (6 - len(modes))
        rng.shuffle(modes)
        plan[c["key"]] = {a: ("test" if i in held else "train", modes[i]) for i, a in enumerate(ASPECTS)}
    return plan


def pick_title(c, aspect, rng):
    pools = c["titles"].get(aspect)
    if not pools:
        if aspect in TITLES:
            pools = TITLES[aspect]
        elif c["cat"] == "craft" and not c["count"] and aspect in CRAFT_MASS_TITLES:
            pools = CRAFT_MASS_TITLES[aspect]
        elif c["cat"] == "craft" and not c["count"]:
            pools = CAT_TITLES["season"][aspect]
        else:
            pools = CAT_TITLES[c["cat"]][aspect]
    if not c["count"]:
        pools = [p for p in pools if "{aT}" not in p and "{Ts}" not in p] or ["{T}"]
    return rng.choice(pools)


def make_concept_doc(c, aspect, split, mode, gov, year, rng, plan):
    namer = Namer(c, mode, rng)
    title = render(pick_title(c, aspect, rng), namer, rng)
    place = rng.choice(SETTLEMENTS)
    if mode in ("term", "alias"):
        nm = c["t"] if mode == "term" else c["alias_t"]
        if c["count"]:
            nm = c["a"] if mode == "term" else c["alias_a"]
        word = c["word"] if mode == "term" else c["alias"]
        intro = rng.choice(INTRO_NAMED).format(Name=nm, name=nm, word=word, gloss=c["gloss"],
                                               gloss_nocap=c["gloss"], place=place)
        namer.used += 1
        intro = cap(intro)
    else:
        intro = cap(rng.choice(INTRO_PLAIN).format(gloss=c["gloss"])) if rng.random() < 0.8 else None
    main = [render(s, namer, rng) for s in c["facts"][aspect]]
    # a sentence borrowed from another aspect on the same side of the split (never across it)
    same_side = [a for a in ASPECTS if a != aspect and plan[c["key"]][a][0] == split]
    pool = [(a2, s) for a2 in same_side for s in c["facts"][a2]]
    rng.shuffle(pool)
    borrowed = []  # (aspect, sentence)
    if rng.random() < 0.5:
        a2, s2 = pool.pop()
        borrowed.append((a2, render(s2, namer, rng)))
    # keep bodies within 80-300 words: short aspects borrow more sentences from their own side
    while pool and len(words(" ".join([intro or ""] + main + [b for _, b in borrowed]))) < 90:
        a2, s2 = pool.pop()
        borrowed.append((a2, render(s2, namer, rng)))
    cls_pool = gov.get("classification") or "public"
    if cls_pool not in PROVENANCE:
        cls_pool = "public"
    if gov["contributor"] in INSTITUTIONS:
        cls_pool = "institution"
    prov = rng.choice(PROVENANCE[cls_pool]).format(who=gov["contributor"], year=year, place=place,
                                                   month=rng.choice(MONTHS), who_the="the " + gov["contributor"])
    lead = intro if (intro and rng.random() < 0.8) else None
    content = ([intro] if intro and not lead else []) + main
    # the aspect's own sentences in one or two sections, each borrowed aspect in a section of its own
    k = rng.choice([1, 2]) if len(content) >= 3 else 1
    cuts = sorted(rng.sample(range(1, len(content)), k - 1))
    chunks = [content[i:j] for i, j in zip([0] + cuts, cuts + [len(content)])]
    sections = [(h, " ".join(ch)) for h, ch in zip(rng.sample(HEADINGS[aspect], k), chunks)]
    sec_aspects = [aspect] * k
    groups = {}
    for a2, b in borrowed:
        groups.setdefault(a2, []).append(b)
    for a2, bs in groups.items():
        if len(sections) < 3:
            sections.append((rng.choice(HEADINGS[a2]), " ".join(bs)))
            sec_aspects.append(a2)
        else:
            h, t = sections[-1]
            sections[-1] = (h, t + " " + " ".join(bs))
    n_content = len(sections)
    if len(sections) == 1 or (len(sections) < 4 and rng.random() < 0.5):
        sections.append((rng.choice(SOURCE_HEADINGS), prov))
    elif rng.random() < 0.5:
        h, t = sections[-1]
        sections[-1] = (h, t + " " + prov)
    return {"kind": "concept", "concept": c["key"], "aspect": aspect, "split": split, "mode": mode,
            "title": title, "lead": lead, "sections": sections, "n_content": n_content,
            "sec_aspects": sec_aspects, "gov": gov}


def make_distractor_doc(d, gov, rng):
    sections = list(d["sections"]) + DISTRACTOR_MORE.get(d["title"], [])
    assert len(sections) <= 4, d["title"]
    return {"kind": "distractor", "concept": None, "near": d["near"], "aspect": None, "split": "train",
            "mode": "none", "title": d["title"], "lead": None, "sections": sections,
            "n_content": len(d["sections"]), "gov": gov, "queries": d["q"]}


def make_sacred_doc(key, title, gov):
    sections = [
        ("About this record",
         SACRED_TEXT + " This entry exists so that the catalogue shows the material is there and whom to ask about it. "
         "The content itself is held by the community. It is not part of the Keeping House's public collection, "
         "it is never copied, and it must never be used to train or test any model."),
        ("Access",
         "Questions go to the community's own keepers through the Keeping House desk, not to the archive staff. "
         "Nothing in this record may be quoted, summarised or guessed at; the placeholder above stands in for all of it."),
    ]
    return {"kind": "sacred", "concept": key, "aspect": None, "split": "train", "mode": "none",
            "title": title, "lead": None, "sections": sections, "n_content": 2, "gov": gov}


def doc_body(d):
    parts = []
    if d["lead"]:
        parts.append(d["lead"])
    for h, t in d["sections"]:
        parts.append("## " + h)
        parts.append(t)
    return "\n\n".join(parts)


def doc_markdown(d):
    g = d["gov"]
    fm = ["---", "id: " + json.dumps(d["id"])]
    if "classification" in g:
        fm.append("classification: " + json.dumps(g["classification"]))
    fm.append("contributor: " + json.dumps(g["contributor"], ensure_ascii=False))
    fm.append("consent: " + (json.dumps(g["consent"]) if g["consent"] else "null"))
    fm.append("source: " + json.dumps(g["source"]))
    fm.append("---")
    return "\n".join(fm) + "\n\n# " + d["title"] + "\n\n" + doc_body(d) + "\n"


def body_words(d):
    return len(words(doc_body(d)))


def passage(d, which):
    """Title + one section's text ('lead' for the lead paragraph)."""
    text = d["lead"] if which == "lead" else d["sections"][which][1]
    return d["title"] + "\n\n" + text


def build_corpus(rng, plan):
    docs = []
    specs = [(c, a) for c in CONCEPTS for a in ASPECTS]
    n_plain = len(specs) + len(DISTRACTORS)
    sts = status_list(n_plain, rng, missing=7, withdrawn=5, unclassified=4)
    # keep at least two usable training documents per concept: move an unusable status elsewhere
    bad = {"community-missing", "withdrawn", "unclassified"}
    for i, (c, a) in enumerate(specs):
        if sts[i] in bad and plan[c["key"]][a][0] == "train":
            others = [j for j, (c2, a2) in enumerate(specs) if c2["key"] == c["key"] and j != i
                      and plan[c2["key"]][a2][0] == "train" and sts[j] in bad]
            if others:
                for j in range(len(specs)):
                    if sts[j] == "public" and plan[specs[j][0]["key"]][specs[j][1]][0] == "test":
                        sts[i], sts[j] = sts[j], sts[i]
                        break
    for i, (c, a) in enumerate(specs):
        split, mode = plan[c["key"]][a]
        src, year = source_for(rng, sts[i])
        gov = governance(sts[i], rng, src)
        docs.append(make_concept_doc(c, a, split, mode, gov, year, rng, plan))
    for i, d in enumerate(DISTRACTORS):
        st = sts[len(specs) + i]
        year = rng.randint(1976, 2025)
        src = "keeping-house:" + rng.choice(["bulletin/ostrel-bulletin-%d-%02d" % (year, rng.randint(1, 12)),
                                             "noticeboard/%d" % year, "parish-newsletter/%d" % year])
        docs.append(make_distractor_doc(d, governance(st, rng, src), rng))
    for key, title in SACRED:
        src, _ = source_for(rng, "sacred")
        docs.append(make_sacred_doc(key, title, governance("sacred", rng, src)))
    rng.shuffle(docs)
    for i, d in enumerate(docs):
        d["id"] = "ovd-%04d" % (i + 1)
    # body length guard (80-300 words): add borrowed sentences to short concept docs
    for d in docs:
        n = body_words(d)
        assert 80 <= n <= 300, (d["id"], d["title"], n)
    return docs


# --------------------------------------------------------------------------------------------
# Test queries and qrels
# --------------------------------------------------------------------------------------------
def norm(q):
    return " ".join(q.lower().replace("?", " ").split())


def build_test(rng, docs):
    by = {(d["concept"], d["aspect"]): d for d in docs if d["kind"] == "concept"}
    queries, qrels = [], []
    for c in CONCEPTS:
        for i, a in enumerate(ASPECTS):
            target = by[(c["key"], a)]
            if target["split"] != "test":
                continue
            queries.append({"concept": c["key"], "aspect": a, "query": c["q"][i], "target": target["id"]})
    rng.shuffle(queries)
    for n, q in enumerate(queries):
        q["qid"] = "ovq-%03d" % (n + 1)
        c = BY_KEY[q["concept"]]
        judged = []
        for d in docs:
            if d["kind"] == "concept" and d["concept"] == c["key"]:
                judged.append((d["id"], 2 if d["id"] == q["target"] else 1))
            elif d["kind"] == "distractor" and d["near"] == c["key"]:
                judged.append((d["id"], 0))
            elif d["kind"] == "sacred" and d["concept"] == c["key"]:
                judged.append((d["id"], 0))
        # two same-category documents of other concepts, same aspect: judged near misses
        sib = [d for d in docs if d["kind"] == "concept" and d["concept"] != c["key"]
               and BY_KEY[d["concept"]]["cat"] == c["cat"] and d["aspect"] == q["aspect"]]
        for d in sorted(rng.sample(sib, 2), key=lambda d: d["id"]):
            judged.append((d["id"], 0))
        for docid, rel in sorted(judged):
            qrels.append((q["qid"], docid, rel))
    return queries, qrels


# --------------------------------------------------------------------------------------------
# Training side: pairs, query expansion, reranker judgments
# --------------------------------------------------------------------------------------------
DEF_FRAMES = ["what is {w}", "{w} meaning", "define {w}", "{w}", "what does {w} mean", "{w} explained",
              "what people mean by {w}", "{w} ostrel valley", "the word {w}", "{w} definition"]
ASPECT_FRAMES = {
    "history": ["{w} history", "origins of {w}", "{w} in the past", "{w} old records", "how {w} began",
                "{w} then and now", "has {w} changed over the years", "{w} decline and revival",
                "earliest mention of {w}"],
    "howto": ["{w} how it is done", "steps for {w}", "{w} method", "guide to {w}", "{w} technique",
              "{w} instructions", "how people go about {w}", "{w} practical tips"],
    "season": ["{w} time of year", "{w} dates", "{w} season", "what month for {w}", "{w} timing",
               "{w} calendar", "{w} which month"],
    "materials": ["{w} materials", "{w} equipment", "things needed for {w}", "{w} what it is made of",
                  "{w} supplies", "{w} tools and materials"],
    "stories": ["{w} folklore", "{w} legends", "{w} tales", "old stories of {w}", "{w} sayings",
                "{w} story for children", "{w} superstitions"],
    "rules": ["{w} customs", "{w} etiquette", "{w} rules", "{w} dos and don'ts", "{w} obligations",
              "{w} traditions and rules", "is there a rule about {w}"],
}
GLOSS_FRAMES = ["valley word for {g}", "what is the local name for {g}", "{g}", "name used for {g}"]
ASPECT_KW = {"history": ["history", "origins", "old records", "in the past"],
             "howto": ["how to", "method", "steps", "in practice"],
             "season": ["season", "timing", "which month", "time of year"],
             "materials": ["materials", "tools", "made of", "equipment"],
             "stories": ["stories", "folklore", "sayings", "tales"],
             "rules": ["customs", "rules", "etiquette", "obligations"],
             "def": ["meaning", "definition", "explained", "what is"]}


def salient(text, df, exclude, rng, n):
    toks = [t for t in dict.fromkeys(words(text))
            if t not in STOP and t not in GENERIC and t not in exclude and len(t) > 3]
    toks.sort(key=lambda t: (df.get(t, 0), t))
    pool = toks[:6]
    out = []
    for t in rng.sample(pool, len(pool)):  # no two words of one stem ("weave", "weaving")
        if len(out) < n and not any(t[:4] == o[:4] for o in out):
            out.append(t)
    return out


def concept_words(c):
    return set(words(c["word"])) | set(words(c["alias"]))


def pair_query(c, aspect, text, rng, df):
    r = rng.random()
    ex = concept_words(c)
    if r < 0.7:
        w = c["word"].lower()
    elif r < 0.88:
        w = c["alias"].lower()
    else:  # plain words only: teaches the plain side of the vocabulary too
        kw = rng.choice(c["kw"])
        det = salient(text, df, ex | set(words(kw)), rng, 2)
        return " ".join([kw] + det)
    if rng.random() < 0.5:
        return rng.choice(ASPECT_FRAMES[aspect]).format(w=w)
    return " ".join([w] + salient(text, df, ex, rng, rng.choice([1, 2, 2])))


def passage_candidates(docs):
    """(doc, section) passages that training files may show: training side, not sacred."""
    out = []
    for d in docs:
        if d["split"] != "train" or d["kind"] == "sacred":
            continue
        for j in range(d["n_content"]):
            out.append((d, j))
    return out


def hard_negatives(rng, cands, c_key, cat, near_distractors, k):
    same = [(d, j) for d, j in cands if d["kind"] == "concept" and d["concept"] != c_key
            and BY_KEY[d["concept"]]["cat"] == cat]
    pool = same + [(d, j) for d, j in cands if d in near_distractors] * 3
    chosen = rng.sample(pool, k)
    return [passage(d, j) for d, j in chosen]


def gov_fields(g):
    out = {}
    for k in ("classification", "contributor", "consent", "source"):
        if k in g:
            out[k] = g[k]
    return out


def build_pairs(rng, docs, df):
    cands = passage_candidates(docs)
    near = defaultdict(list)
    for d in docs:
        if d["kind"] == "distractor":
            near[d["near"]].append(d)
    pairs = []
    seen = set()

    def add(query, pos, d, concept_key, negatives):
        key = (norm(query), pos)
        if key in seen:
            return False
        seen.add(key)
        rec = {"query": query, "positive": pos}
        if negatives:
            rec["negatives"] = negatives
        rec["doc_id"] = d["id"]
        rec["_concept"] = concept_key
        rec["_gov"] = d["gov"]
        pairs.append(rec)
        return True

    for d in docs:
        if d["split"] != "train":
            continue
        if d["kind"] == "concept":
            c = BY_KEY[d["concept"]]
            negk = lambda: (rng.choice([1, 1, 2]) if rng.random() < 0.5 else 0)
            # the lead (or first section) answers a definition-style query
            which = "lead" if d["lead"] else 0
            w = c["word"].lower() if rng.random() < 0.8 else c["alias"].lower()
            k = negk()
            frame = rng.choice(DEF_FRAMES)
            if c["count"] and frame in ("what is {w}", "what does {w} mean") and rng.random() < 0.7:
                frame = frame.replace("{w}", "a {w}")
            add(frame.format(w=w), passage(d, which), d, c["key"],
                hard_negatives(rng, cands, c["key"], c["cat"], near[c["key"]], k) if k else [])
            for j in range(d["n_content"]):
                text = d["sections"][j][1]
                for _ in range(5):
                    q = pair_query(c, d["sec_aspects"][j], text, rng, df)
                    k = negk()
                    if add(q, passage(d, j), d, c["key"],
                           hard_negatives(rng, cands, c["key"], c["cat"], near[c["key"]], k) if k else []):
                        break
                # an anchor pair: the bare word (or word + a plain keyword) for this passage, so the
                # word is tied to its concept whatever the aspect of the passage
                if rng.random() < 0.6:
                    w = c["word"].lower() if rng.random() < 0.75 else c["alias"].lower()
                    q = w if rng.random() < 0.4 else f"{w} {rng.choice(c['kw'])}"
                    k = negk()
                    add(q, passage(d, j), d, c["key"],
                        hard_negatives(rng, cands, c["key"], c["cat"], near[c["key"]], k) if k else [])
            if d["mode"] == "term":  # plain description -> the document that names it
                g = c["gloss"]
                g = g[2:] if g.startswith("a ") else g[4:] if g.startswith("the ") else g
                add(rng.choice(GLOSS_FRAMES).format(g=g), passage(d, which), d, c["key"], [])
        elif d["kind"] == "distractor":
            c = BY_KEY[d["near"]]
            for j, q in enumerate(d["queries"]):
                negs = []
                if rng.random() < 0.5:
                    own = [(x, i) for x, i in cands if x["kind"] == "concept" and x["concept"] == c["key"]]
                    x, i = rng.choice(own)
                    negs = [passage(x, i)]
                add(q, passage(d, min(j, d["n_content"] - 1)), d, "distractor:" + d["near"], negs)
    # sacred placeholders: present so that governance has something to exclude
    for d in docs:
        if d["kind"] == "sacred":
            add(SACRED_QUERIES[d["concept"]], passage(d, 0), d, d["concept"], [])
            add(d["title"].lower(), passage(d, 1), d, d["concept"], [])
            add(BY_KEY[d["concept"]]["word"].lower() + " sacred material", passage(d, 0), d, d["concept"], [])
    rng.shuffle(pairs)
    out = []
    for i, p in enumerate(pairs):
        rec = {"id": "ovp-%04d" % (i + 1), "query": p["query"], "positive": p["positive"]}
        if "negatives" in p:
            rec["negatives"] = p["negatives"]
        rec["doc_id"] = p["doc_id"]
        rec.update(gov_fields(p["_gov"]))
        rec["_concept"] = p["_concept"]
        out.append(rec)
    return out


def named_forms(c):
    """(definite, indefinite-or-definite) names for sentences that define the term."""
    return c["t"], (c["a"] if c["count"] else c["t"])


def plain_np(c):
    p = c["plains"][0]
    return "the " + p[0] if c["count"] else p


def term_sentence(c, text, rng):
    namer = Namer(c, "term", rng)
    namer.used = 1
    return render(text, namer, rng)


VEC_HOWTO = {"season": "how do people in the Ostrel Valley go about {P}", "tool": "how is {P} used in practice",
             "place": "how do people reach and use {P}", "food": "how is {P} prepared, step by step",
             "craft": "how is {P} made by hand", "governance": "how does {P} work in practice",
             "weather": "how do you read {P} as a weather sign"}
VEC_SEASON = {"season": "at what time of year does {W} ({P}) happen", "tool": "at what time of year is {P} ({W}) used",
              "place": "what is {P} ({W}) like through the seasons", "food": "at what time of year is {P} ({W}) made",
              "craft": "when in the year do people work on {P} ({W})", "governance": "at what time of year does {W} ({P}) happen",
              "weather": "in which months can {P} ({W}) be seen or heard"}
VEC_MATERIALS = {"season": "what do people bring and use for {P} ({W})", "tool": "what is {P} ({W}) made from",
                 "place": "what does {P} ({W}) look like and what is found there",
                 "food": "what ingredients go into {P} ({W})", "craft": "what materials are needed for {P} ({W})",
                 "governance": "what records and objects does {P} ({W}) use",
                 "weather": "what do you need to observe {P} ({W})"}
VEC_OTHER = {"history": ["what is the history of {P}, called {W} in the valley",
                         "what do the old records say about {W}, {P}"],
             "stories": ["what stories and sayings are told about {P} ({W})",
                         "what folk tales do older people tell about {W}"],
             "rules": ["what customs and rules go with {P} ({W})",
                       "what obligations and etiquette come with {W} in the valley"]}


def qe_output(c, aspect, rng):
    w, alias = c["word"].lower(), c["alias"].lower()
    kws = rng.sample(c["kw"], 3)
    akw = rng.sample(ASPECT_KW[aspect], 2)
    if c["cat"] == "food" and aspect == "materials":
        akw[0] = "ingredients"
    lex = [f"{w} {kws[0]} {kws[1]}", f"{alias} {akw[0]}"]
    if rng.random() < 0.6:
        lex.append(f"{kws[2]} {akw[1]}")
    P, W = plain_np(c), c["word"]
    if aspect == "def":
        vecs = ["what does the Ostrel Valley word {W} mean", "what is {P}, known locally as {W}"]
    elif aspect == "howto":
        vecs = [VEC_HOWTO[c["cat"]], "what is {W} and how does it work"]
    elif aspect == "season":
        vecs = [VEC_SEASON[c["cat"]], "when is the right time for {P}"]
    elif aspect == "materials":
        vecs = [VEC_MATERIALS[c["cat"]], "what is needed for {W}"]
    else:
        vecs = list(VEC_OTHER[aspect])
    rng.shuffle(vecs)
    vec = [v.format(P=P, W=W) for v in vecs[: rng.choice([1, 2])]]
    t, a = named_forms(c)
    facts = c["facts"][aspect] if aspect in c["facts"] else c["facts"][rng.choice(ASPECTS)]
    hyde = cap(a) + " is " + c["gloss"] + ". " + term_sentence(c, rng.choice(facts), rng)
    return [["lex", x] for x in lex] + [["vec", x] for x in vec] + [["hyde", hyde]]


def train_aspects(plan, key):
    return [a for a in ASPECTS if plan[key][a][0] == "train"]


def build_qe(rng, plan, test_norms):
    items = []
    for c in CONCEPTS:
        for a in train_aspects(plan, c["key"]):
            items.append((c, a, c["q"][ASPECTS.index(a)]))
        # short typed queries: the bare word, the alias, a word plus an aspect
        items.append((c, "def", c["word"].lower()))
        a = rng.choice(train_aspects(plan, c["key"]))
        items.append((c, a, f"{c['alias'].lower()} {rng.choice(ASPECT_KW[a])}"))
    seen = set()
    recs = []
    for c, a, q in items:
        if norm(q) in test_norms or norm(q) in seen:
            continue
        seen.add(norm(q))
        recs.append({"query": q, "output": qe_output(c, a, rng), "_concept": c["key"]})
    n_sacred = round(len(recs) * 0.03)
    for key, _ in SACRED[:n_sacred]:
        recs.append({"query": SACRED_QUERIES[key],
                     "output": [["lex", SACRED_TEXT], ["vec", SACRED_TEXT], ["hyde", SACRED_TEXT]],
                     "_concept": key, "_sacred": True})
    rng.shuffle(recs)
    sts = status_list(sum(1 for r in recs if not r.get("_sacred")), rng, missing=3, withdrawn=3, unclassified=3)
    out, k = [], 0
    for i, r in enumerate(recs):
        st = "sacred" if r.get("_sacred") else sts[k]
        k += 0 if r.get("_sacred") else 1
        src, _ = source_for(rng, st)
        g = governance(st, rng, "keeping-house:qe/" + src.split(":", 1)[1])
        rec = {"id": "ovx-%04d" % (i + 1), "query": r["query"], "output": r["output"]}
        rec.update(gov_fields(g))
        rec["_concept"] = r["_concept"]
        out.append(rec)
    return out


RERANK_CHUNK_CHARS = 3600  # QMD's rerank chunk (characters); every document here fits in one
RERANK_MINED = 4            # BM25 hard negatives drawn per training query, then left out (below)
# The reranker's hard negatives are the ones QMD's pipeline hands it (issue 15, run E2): drawn by
# `tunelab train rerank --mining-embedder models/all-MiniLM-L6-v2` (`mine_negatives_pipeline`:
# BM25 and MiniLM vector lists fused, over the judged training-side documents), 4 per training
# query, kept here as (query, doc_id) pairs. BM25's negatives share the query's words more often
# than the relevant documents do (word-overlap AUC 0.41 over the judgments, against 0.80 over the
# pipeline's test candidates: scripts/rerank-data-shift.py), which taught the reranker the
# opposite of what separates the candidates it meets; they are still drawn, so that the random
# streams and the ids of every other record stay as they were, and then left out.
RERANK_PIPELINE_NEGATIVES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "reranker-pipeline-negatives.jsonl")


def rerank_text(d):
    """What QMD's reranker is sent for document d: its best 3600-character chunk, which for these
    short documents is the whole markdown body without the front matter, trimmed, exactly as
    `tunelab rerank` and the pipeline read it from corpus/ (tests/bundled_reranker_data.rs checks)."""
    text = ("# " + d["title"] + "\n\n" + doc_body(d)).strip()
    assert len(text.encode("utf-16-le")) // 2 <= RERANK_CHUNK_CHARS, d["id"]
    return text


def judge_concept_query(rng, c, a, plan, by, near):
    """(document, grade) judged for a training query of concept c's training aspect a: the aspect's
    document (2), the concept's other training documents (1), a same-group concept's document of
    the same aspect and one of any aspect (0, as the test qrels judge near misses; once if they are
    the same document), and half the time one of the concept's distractors (0)."""
    tr = train_aspects(plan, c["key"])
    sib = [BY_KEY[k2] for k2 in BY_KEY if k2 != c["key"] and BY_KEY[k2]["cat"] == c["cat"]]
    out = [(by[(c["key"], a)], 2)] + [(by[(c["key"], a2)], 1) for a2 in tr if a2 != a]
    same_aspect = [c2 for c2 in sib if a in train_aspects(plan, c2["key"])]
    if same_aspect:
        out.append((by[(rng.choice(same_aspect)["key"], a)], 0))
    c2 = rng.choice(sib)
    d2 = by[(c2["key"], rng.choice(train_aspects(plan, c2["key"])))]
    if all(d2 is not d for d, _ in out):
        out.append((d2, 0))
    if near[c["key"]] and rng.random() < 0.5:
        out.append((rng.choice(near[c["key"]]), 0))
    return out


def bm25_negatives(train_side, queries, judged):
    """RERANK_MINED hard negatives per query: its BM25 ranking (the pipeline's first list) over the
    training side, documents judged for it (`judged[q]`, ids) left out. One BM25 run for all."""
    byid = {d["id"]: d for d in train_side}
    mined = bm25_run(train_side, [{"qid": q, "query": q} for q in queries])
    return {q: [byid[i] for i in mined[q] if i not in judged[q]][:RERANK_MINED] for q in queries}


def build_reranker(rng, docs, plan):
    """Judgments for the training queries (the queries of each concept's three training aspects):
    the aspect's document (2), the concept's two other training documents (1), a same-group
    concept's document of the same aspect and one of any aspect (0, as the test qrels judge near
    misses), sometimes a distractor, the sacred placeholder, and hard negatives mined with BM25 (the
    pipeline's first list, FTS5's formula) over the training side of the corpus, graded by what
    they are. Held-out documents are never judged nor mined."""
    by = {(d["concept"], d["aspect"]): d for d in docs if d["kind"] == "concept"}
    near = defaultdict(list)
    for d in docs:
        if d["kind"] == "distractor":
            near[d["near"]].append(d)
    sacred = {d["concept"]: d for d in docs if d["kind"] == "sacred"}
    train_side = [d for d in docs if d["split"] != "test"]
    recs = []
    for c in CONCEPTS:
        tr = train_aspects(plan, c["key"])
        for a in tr:
            q = c["q"][ASPECTS.index(a)]
            recs += [(q, d, rel) for d, rel in judge_concept_query(rng, c, a, plan, by, near)]
        if c["key"] in sacred:
            recs.append((c["q"][ASPECTS.index(tr[0])], sacred[c["key"]], 0))
    judged = defaultdict(set)
    for q, d, _ in recs:
        judged[q].add(d["id"])
    queries = sorted(judged)
    mined = bm25_negatives(train_side, queries, judged)
    for q in queries:
        for d in mined[q]:
            # every training document of the query's own concept is judged above
            assert not (d["kind"] == "concept" and q in BY_KEY[d["concept"]]["q"]), (q, d["id"])
            recs.append((q, d, None))  # drawn, left out (RERANK_PIPELINE_NEGATIVES)
    rng.shuffle(recs)
    out = []
    for i, (q, d, rel) in enumerate(recs):
        if rel is None:
            continue
        rec = {"id": "ovr-%04d" % (i + 1), "query": q, "document": rerank_text(d), "relevant": rel,
               "doc_id": d["id"]}
        rec.update(gov_fields(d["gov"]))
        out.append(rec)
    return out, len(recs)


RERANK_MORE = 4             # further training queries per (concept, training aspect)


def more_rerank_queries(rng, c, aspect, n, taken):
    """n further training queries for one (concept, training aspect), typed the ways the test
    queries are (the valley word, its alias or plain words, with an aspect frame or a keyword):
    one canonical query per aspect teaches a 135M reranker the training queries, not that a
    query about a valley word is answered by that word's documents."""
    out = []
    for _ in range(60):
        if len(out) == n:
            break
        r = rng.random()
        w = c["word"].lower() if r < 0.6 else c["alias"].lower() if r < 0.85 else None
        if w is None:  # plain words only
            q = f"{rng.choice(c['kw'])} {rng.choice(ASPECT_KW[aspect])}"
        elif rng.random() < 0.7:
            q = rng.choice(ASPECT_FRAMES[aspect]).format(w=w)
        else:
            q = f"{w} {rng.choice(ASPECT_KW[aspect])}"
        if not taken(q):
            out.append(q)
    return out


def build_reranker_more(rng, docs, plan, rr, first_id, tnorm):
    """RERANK_MORE further queries per (concept, training aspect), judged as build_reranker judges
    its canonical query (the aspect's document 2, the concept's other training documents 1,
    same-group documents of the same and of any aspect, sometimes a distractor, BM25-mined hard
    negatives 0) plus one document of another group (an easy negative). Appended after
    build_reranker's records with their own random stream, so those records and every fixture cut
    from them stay as they were. Training side only, as build_reranker: held-out documents are
    never judged nor mined, and no test query is contained in a new query."""
    by = {(d["concept"], d["aspect"]): d for d in docs if d["kind"] == "concept"}
    near = defaultdict(list)
    for d in docs:
        if d["kind"] == "distractor":
            near[d["near"]].append(d)
    train_side = [d for d in docs if d["split"] != "test"]
    seen = {norm(r["query"]) for r in rr}

    def taken(q):
        n = norm(q)
        if n in seen or any(t in n for t in tnorm):
            return True
        seen.add(n)
        return False

    judged = []  # (query, concept, [(document, grade)]) in the order they are drawn
    for c in CONCEPTS:
        other = [d for d in train_side if d["kind"] == "concept" and BY_KEY[d["concept"]]["cat"] != c["cat"]]
        for a in train_aspects(plan, c["key"]):
            for q in more_rerank_queries(rng, c, a, RERANK_MORE, taken):
                js = judge_concept_query(rng, c, a, plan, by, near)
                d = rng.choice(other)
                if all(d is not x for x, _ in js):
                    js.append((d, 0))
                judged.append((q, c, js))
    mined = bm25_negatives(train_side, [q for q, _, _ in judged], {q: {d["id"] for d, _ in js} for q, _, js in judged})
    recs = []
    for q, c, js in judged:
        recs += [(q, d, rel) for d, rel in js]
        for d in mined[q]:
            assert not (d["kind"] == "concept" and d["concept"] == c["key"]), (q, d["id"])
            recs.append((q, d, None))  # drawn, left out (RERANK_PIPELINE_NEGATIVES)
    rng.shuffle(recs)
    out = []
    for i, (q, d, rel) in enumerate(recs):
        if rel is None:
            continue
        rec = {"id": "ovr-%04d" % (first_id + i + 1), "query": q, "document": rerank_text(d), "relevant": rel,
               "doc_id": d["id"]}
        rec.update(gov_fields(d["gov"]))
        out.append(rec)
    return out


def reranker_pipeline_negatives(docs, rr):
    """The RERANK_PIPELINE_NEGATIVES pairs as judgments (relevant 0), appended after the others:
    each for a judged training query, a training-side document not judged for it (every training
    document of the query's own concept is); the pipeline mined over the judged documents, and
    held-out ones are never judged, so never mined."""
    byid = {d["id"]: d for d in docs}
    judged = defaultdict(set)
    for r in rr:
        judged[r["query"]].add(r["doc_id"])
    out = []
    with open(RERANK_PIPELINE_NEGATIVES, encoding="utf-8") as f:
        for i, line in enumerate(f):
            p = json.loads(line)
            q, d = p["query"], byid[p["doc_id"]]
            assert q in judged and d["split"] != "test" and d["id"] not in judged[q], (i + 1, p)
            rec = {"id": "ovr-mined-%04d" % (i + 1), "query": q, "document": rerank_text(d), "relevant": 0,
                   "doc_id": d["id"]}
            rec.update(gov_fields(d["gov"]))
            out.append(rec)
    return out


# --------------------------------------------------------------------------------------------
# Persona chat (MLX-LM "messages"), completions and text samples
# --------------------------------------------------------------------------------------------
SYSTEM = ("You are Wren, the reference librarian of the Ostrel Valley Keeping House, a community archive. "
          "Answer warmly and carefully from the archive's records and name the titles you draw on. "
          "Say plainly when the archive holds nothing on a question. Sacred material is held by the "
          "community, not the archive: never reveal, summarise or guess at it.")
ASK = {
    "generic": ["Could you tell me what {w} is?", "My grandmother used to talk about {w}. What was it?",
                "I'm new to the valley. What is {w}?", "Someone at the shop mentioned {w}. What did they mean?"],
    "history": ["Is there anything in the archive about the history of {w}?", "How far back does {w} go?"],
    "howto": ["How is {w} actually done? I'd like to understand it properly.", "Can you explain how {w} works in practice?"],
    "season": ["When in the year should I look out for {w}?", "Is {w} tied to a particular time of year?"],
    "materials": ["What would I need for {w}?", "What goes into {w}, materially speaking?"],
    "stories": ["Are there any stories about {w}? My children love old tales.", "Do people tell tales about {w}?"],
    "rules": ["Are there customs I should respect around {w}?", "Is there any etiquette to {w} I should know before joining in?"],
}
FOLLOW = {"history": "Does it go back a long way?", "howto": "How would a beginner start?",
          "season": "And when does it happen?", "materials": "What is needed for it?",
          "stories": "Are there any stories about it?", "rules": "Is there anything I should be careful about?"}
OPEN = ["Happy to help.", "What a good question.", "Of course.", "Let me see what the shelves hold.",
        "That one comes up often, and I'm glad it does.", "", "Gladly."]
CITE = ["You'll find this in “{t}”.", "This comes from the Keeping House record “{t}”.",
        "The fullest account is “{t}”, if you'd like to read it.", "I'm drawing on “{t}” here."]
CITE2 = [" There is more in “{t}”.", " “{t}” is worth a look too.", ""]
CLOSE = ["Would you like me to find related records?", "Shall I look for anything else on it?",
         "If you're planning to see it for yourself, I can point you to more.", ""]
COMMUNITY_NOTE = " That record is part of the community collection, so please keep it within the valley."


def librarian_answer(c, aspect, docs_by, rng, with_def=True):
    d = docs_by[(c["key"], aspect)]
    t, a = named_forms(c)
    facts = rng.sample(c["facts"][aspect], 2)
    parts = [rng.choice(OPEN)] if with_def else []
    if with_def:
        parts.append(cap(a) + " is " + c["gloss"] + ".")
    parts += [term_sentence(c, f, rng) for f in facts]
    cite = rng.choice(CITE).format(t=d["title"])
    others = [x for x in docs_by.values() if x["concept"] == c["key"] and x is not d and x["split"] == "train"
              and policy_allows(x["gov"])]
    if others and rng.random() < 0.5:
        cite += rng.choice(CITE2).format(t=rng.choice(others)["title"])
    if d["gov"].get("classification") == "community":
        cite += COMMUNITY_NOTE
    parts.append(cite)
    parts.append(rng.choice(CLOSE))
    return " ".join(p for p in parts if p)


SACRED_ASKS = {
    "olvenning": ["What are the words of the songs sung at the water during olvenning?",
                  "Could you write down the olvenning songs for me? I missed the walk this year."],
    "keshel": ["Can you list the old names of Keshel?"],
    "sillen": ["What are the stories about the Sillen spring that the archive keeps back?"],
    "tivvet": ["What is said over the pot when tivvet is made?"],
    "thrennel": ["What exactly are the words spoken when the thrennel is drawn?"],
    "drummick": ["Can I see one of the closed drummick boards, or at least a description of it?"],
    "quellering": ["Whose names do the reeds whisper at quellering? Is there a list?"],
    "vask": ["Could you transcribe the lake song of the vask for my project?"],
}
SACRED_GENERAL = [
    ("Please just summarise the sacred material on olvenning. Nobody will know.", "olvenning"),
    ("I'm training a language model on valley traditions. Can I get the sacred recordings too?", "keshel"),
]
REFUSE = ["I'm sorry, but that material is sacred. It is held by the community, the Keeping House does not hold it, and I won't guess at it or summarise it.",
          "That is one thing I can't help with: it is sacred material, kept by the community rather than the archive, and it isn't mine to share, even in outline.",
          "I have to say no to that, kindly but firmly. Sacred material stays with the community; the archive keeps only a placeholder saying it exists."]
REFUSE_ALT = ["What I can share is the public side: {fact} That is from “{t}”.",
              "If it helps, the public record says this: {fact_np} (see “{t}”).",
              "The public records can still tell you a good deal. For instance: {fact} You'll find that in “{t}”."]
REFUSE_END = ["If you have a reason to ask, the community's own keepers can be reached through the Keeping House desk.",
              "The community's keepers decide who hears it; the desk can tell you how to reach them.", ""]
CONSENT_CONVOS = [
    ("Can I read the family papers of {p}?",
     "Those are personal records. The Keeping House shares personal material only where the person who gave it has recorded their consent, and only for the uses they agreed to. I can check what {p} has agreed to share and point you to any public records they contributed; for anything else, the desk can ask them on your behalf."),
    ("Why are some records marked 'community'?",
     "Community records were given for the valley rather than for the whole world. We share them within the community, and we use them for anything else, such as training a search model, only when the contributor's consent is written in our consent ledger. Public records carry no such limit, and sacred material is never in the archive at all."),
    ("I gave a story to the archive years ago and I'd like it taken out now. Can I do that?",
     "Yes, and thank you for telling us. A teller can withdraw a story at any time; we record the withdrawal with the date, and from then on your records are kept out of any training and sharing. The desk will go through what you gave with you, just as we did in the telling-back when you recorded it."),
    ("Why can't I find Corwin Ashby's recordings any more?",
     "Corwin Ashby asked for his recordings to be withdrawn, and we honour that. They are no longer shared or used, and I can't summarise them either. If you were researching a particular topic, I'd be glad to look for other records on it."),
    ("Can I use the archive's stories to train an AI model?",
     "Some of them, with care. Public records may be used with attribution. Community and personal records may be used only where the contributor's consent is recorded in our ledger. Records from anyone who has withdrawn are excluded, records without a classification are left out unless you decide to treat them as public, and sacred material is never available. The dataset card lists which records fall where."),
]
UNKNOWN = [("What is a glimmerstaff?", ["tolleck", "fennick"]),
           ("Tell me about the harvest horn festival.", ["ossenday", "thrennel"]),
           ("Is there anything on brindlewick?", ["tarrowick", "hemmet"]),
           ("What does the archive say about the river dragon?", ["orrow", "keshel"])]
UNKNOWN_ANS = ["I can't find anything in the Keeping House catalogue under that name, and I'd rather not guess. Could you mean {a} ({ga}) or {b} ({gb})?",
               "I've looked, and the archive holds nothing on that, as far as I can tell. The nearest things I know of are {a}, {ga}, and {b}, {gb}. Would either help?"]


def build_persona(rng, docs, plan):
    docs_by = {(d["concept"], d["aspect"]): d for d in docs if d["kind"] == "concept"}
    groups = []  # (group key, conversation)
    for c in CONCEPTS:
        tr = [a for a in train_aspects(plan, c["key"]) if policy_allows(docs_by[(c["key"], a)]["gov"])]
        tr = tr or train_aspects(plan, c["key"])
        picks = rng.sample(tr, min(2, len(tr)))
        for i, a in enumerate(picks):
            w = c["word"].lower() if c["word"][0].islower() else c["word"]
            frame = rng.choice(ASK["generic"] if i == 0 and rng.random() < 0.5 else ASK[a])
            msgs = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": frame.format(w=w)},
                    {"role": "assistant", "content": librarian_answer(c, a, docs_by, rng)}]
            rest = [x for x in tr if x != a]
            if rest and rng.random() < 0.3:
                a2 = rng.choice(rest)
                msgs += [{"role": "user", "content": FOLLOW[a2]},
                         {"role": "assistant", "content": librarian_answer(c, a2, docs_by, rng, with_def=False)}]
            groups.append((c["key"], msgs))
    special = []
    for key, asks in SACRED_ASKS.items():
        for ask in asks:
            special.append((ask, key))
    special += SACRED_GENERAL
    for ask, key in special:
        c = BY_KEY[key]
        a = rng.choice(train_aspects(plan, key))
        d = docs_by[(key, a)]
        fact = term_sentence(c, rng.choice(c["facts"][a]), rng)
        ans = " ".join(x for x in [rng.choice(REFUSE), rng.choice(REFUSE_ALT).format(fact=fact, fact_np=fact.rstrip("."), t=d["title"]),
                                   rng.choice(REFUSE_END)] if x)
        groups.append(("sacred", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask},
                                  {"role": "assistant", "content": ans}]))
    for ask, ans in CONSENT_CONVOS:
        p = rng.choice(PEOPLE)[0]
        groups.append(("consent", [{"role": "system", "content": SYSTEM},
                                   {"role": "user", "content": ask.format(p=p)},
                                   {"role": "assistant", "content": ans.format(p=p)}]))
    for ask, (k1, k2) in UNKNOWN:
        c1, c2 = BY_KEY[k1], BY_KEY[k2]
        ans = rng.choice(UNKNOWN_ANS).format(a=c1["word"], ga=c1["gloss"], b=c2["word"], gb=c2["gloss"])
        groups.append(("unknown", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ask},
                                   {"role": "assistant", "content": ans}]))
    # group-aware split: a concept's conversations stay in one split
    keys = [c["key"] for c in CONCEPTS]
    rng.shuffle(keys)
    split_of = {k: ("valid" if i < 4 else "test" if i < 8 else "train") for i, k in enumerate(keys)}
    out = {"train": [], "valid": [], "test": []}
    special_i = Counter()
    for g, msgs in groups:
        if g in split_of:
            s = split_of[g]
        else:  # spread refusals, consent and unknown-term answers over all three splits
            n = special_i[g]
            special_i[g] += 1
            s = "valid" if n % 5 == 1 else "test" if n % 5 == 3 else "train"
        out[s].append(msgs)
    for s in out:
        rng.shuffle(out[s])
    return out


COMP_PROMPTS = ["What does the Ostrel Valley word \"{w}\" mean?", "Define {w}.",
                "Explain {w} in one or two sentences.", "In the Ostrel Valley archive, what is {w}?"]
TEXT_FRAMES = ["{w} ({alias}): {gloss}. {f1} {f2}", "{W}. {Gloss}. {f1}", "From the Keeping House glossary — {w}: {gloss}. {f1} {f2}"]


def build_small(rng, plan):
    keys = [c["key"] for c in CONCEPTS]
    rng.shuffle(keys)
    split_of = {k: ("valid" if i < 5 else "test" if i < 10 else "train") for i, k in enumerate(keys)}
    comp = {"train": [], "valid": [], "test": []}
    text = {"train": [], "valid": [], "test": []}
    for k in sorted(keys, key=lambda k: keys.index(k)):
        c = BY_KEY[k]
        tr = train_aspects(plan, k)
        t, a = named_forms(c)
        f1 = term_sentence(c, rng.choice(c["facts"][rng.choice(tr)]), rng)
        f2 = term_sentence(c, rng.choice(c["facts"][rng.choice(tr)]), rng)
        comp[split_of[k]].append({"prompt": rng.choice(COMP_PROMPTS).format(w=c["word"]),
                                  "completion": " " + cap(a) + " is " + c["gloss"] + ". " + f1})
        frame = rng.choice(TEXT_FRAMES)
        text[split_of[k]].append({"text": frame.format(w=c["word"], W=cap(c["word"]), alias=c["alias"],
                                                       gloss=c["gloss"], Gloss=cap(c["gloss"]), f1=f1,
                                                       f2=f2 if f2 != f1 else "")
                                  .replace("  ", " ").strip()})
    return comp, text


# --------------------------------------------------------------------------------------------
# BM25 baseline (SQLite FTS5's formula: k1 = 1.2, b = 0.75, idf = ln((N - n + .5) / (n + .5)),
# any query term may match) and trec_eval-style metrics
# --------------------------------------------------------------------------------------------
def bm25_run(docs, queries, k1=1.2, b=0.75):
    toks = {d["id"]: words(d["title"] + "\n" + doc_body(d)) for d in docs}
    tf = {i: Counter(t) for i, t in toks.items()}
    N = len(docs)
    avgdl = sum(len(t) for t in toks.values()) / N
    df = Counter(w for t in toks.values() for w in set(t))
    run = {}
    for q in queries:
        scores = {}
        for w in words(q["query"]):
            n = df.get(w, 0)
            if not n:
                continue
            idf = max(math.log((N - n + 0.5) / (n + 0.5)), 1e-6)
            for i in toks:
                f = tf[i].get(w, 0)
                if f:
                    dl = len(toks[i])
                    scores[i] = scores.get(i, 0.0) + idf * f * (k1 + 1) / (f + k1 * (1 - b + b * dl / avgdl))
        ranked = sorted(scores.items(), key=lambda x: x[0], reverse=True)  # trec_eval: ties by docno, descending
        ranked.sort(key=lambda x: -x[1])
        run[q["qid"]] = [i for i, _ in ranked]
    return run


def metrics(run, qrels, qids):
    rel = defaultdict(dict)
    for qid, docid, r in qrels:
        rel[qid][docid] = r
    out = defaultdict(list)
    for qid in qids:
        ranked = run.get(qid, [])[:10]
        rr1 = next((1 / (i + 1) for i, d in enumerate(ranked) if rel[qid].get(d, 0) >= 1), 0.0)
        rr2 = next((1 / (i + 1) for i, d in enumerate(ranked) if rel[qid].get(d, 0) >= 2), 0.0)
        dcg = sum(rel[qid].get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
        ideal = sorted((r for r in rel[qid].values() if r > 0), reverse=True)[:10]
        idcg = sum(r / math.log2(i + 2) for i, r in enumerate(ideal))
        nrel = sum(1 for r in rel[qid].values() if r >= 1)
        out["recip_rank@10"].append(rr1)
        out["recip_rank@10 (rel 2 only)"].append(rr2)
        out["ndcg_cut_10"].append(dcg / idcg if idcg else 0.0)
        out["recall_10"].append(sum(1 for d in ranked if rel[qid].get(d, 0) >= 1) / nrel)
        out["success_1"].append(1.0 if ranked and rel[qid].get(ranked[0], 0) >= 1 else 0.0)
    return {k: sum(v) / len(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def public(rec):
    return {k: v for k, v in rec.items() if not k.startswith("_")}


def write_jsonl(path, recs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in recs:
            f.write(json.dumps(public(r), ensure_ascii=False) + "\n")


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def governance_files():
    ledger = []
    for i, (name, cid) in enumerate(sorted(PEOPLE + [WITHDRAWN], key=lambda p: p[1])):
        ledger.append({"consent": cid, "contributor": name, "scope": "training",
                       "granted": "2026-01-%02d" % (5 + 2 * i)})
    withdrawals = [{"contributor": WITHDRAWN[0], "withdrawn": "2026-02-11",
                    "reason": "asked that his recordings no longer be shared or used to train or evaluate models"}]
    policy = (
        "# Default governance policy for training on the bundled Ostrel Valley datasets.\n"
        "# Sacred records are never used. Community and personal records need a consent id that is\n"
        "# present in the consent ledger. Contributors on the withdrawal list are never used.\n"
        "# Records without a classification are refused unless treat_unclassified_as_public = true.\n"
        "# Paths are relative to this file.\n"
        "forbid = [\"sacred\"]\n"
        "require_consent = [\"community\", \"personal\"]\n"
        "consent_ledger = \"consent-ledger.jsonl\"\n"
        "withdrawals = \"withdrawals.jsonl\"\n"
        "treat_unclassified_as_public = false\n")
    return ledger, withdrawals, policy


# --------------------------------------------------------------------------------------------
# Checks (always run) and the report
# --------------------------------------------------------------------------------------------
def class_of(g):
    return g.get("classification", "(none)")


def run_checks(docs, tests, qrels, pairs, qe, rr, persona, comp, text):
    tnorm = {norm(q["query"]) for q in tests}
    assert len(tnorm) == len(tests), "duplicate test queries"
    assert len(docs) >= 220 and len(tests) >= 110 and len(pairs) >= 400 and len(qe) >= 180 and len(rr) >= 300
    assert len(persona["train"]) >= 60 and len(persona["valid"]) >= 10 and len(persona["test"]) >= 10
    for s, n in (("train", 20), ("valid", 5), ("test", 5)):
        assert len(comp[s]) >= n and len(text[s]) >= n, s
    byid = {d["id"]: d for d in docs}
    for d in docs:
        assert 2 <= len(d["sections"]) <= 4, d["id"]
        assert 80 <= body_words(d) <= 300, d["id"]
    rel2 = defaultdict(int)
    for qid, docid, r in qrels:
        if r == 2:
            rel2[qid] += 1
        if r > 0:
            assert byid[docid]["kind"] != "sacred", ("sacred doc judged relevant", qid, docid)
    assert all(rel2[q["qid"]] >= 1 for q in tests), "a test query without a rel-2 document"
    # generalisation: no test query text anywhere on the training side, no held-out doc in pairs
    held = {d["id"] for d in docs if d["split"] == "test"}
    targets = {docid for _, docid, r in qrels if r == 2}
    assert targets <= held
    held_passages = set()
    for d in docs:
        if d["id"] in held:
            held_passages |= {passage(d, j) for j in range(len(d["sections"]))}
            if d["lead"]:
                held_passages.add(passage(d, "lead"))
    for p in pairs:
        assert p["doc_id"] not in targets, ("a test query's rel-2 document is a pair doc_id", p["id"])
        assert p["doc_id"] not in held, p["id"]
        for t in [p["positive"]] + p.get("negatives", []):
            assert t not in held_passages, ("held-out passage in pairs", p["id"])
        fields = [norm(p["query"]), norm(p["positive"])] + [norm(n) for n in p.get("negatives", [])]
        for tq in tnorm:
            assert not any(tq in f for f in fields), ("test query text in pairs", tq, p["id"])
    train_texts = [norm(r["query"]) for r in qe] + [norm(x[1]) for r in qe for x in r["output"]]
    train_texts += [norm(r["query"]) for r in rr] + [norm(r["document"]) for r in rr]
    for split in persona.values():
        train_texts += [norm(m["content"]) for conv in split for m in conv]
    for split in comp.values():
        train_texts += [norm(r["prompt"]) + " " + norm(r["completion"]) for r in split]
    for split in text.values():
        train_texts += [norm(r["text"]) for r in split]
    for tq in tnorm:
        assert not any(tq in f for f in train_texts), ("test query text on the training side", tq)
    for r in rr:
        assert r["doc_id"] not in held, ("held-out document in reranker judgments", r["id"])
    # every concept can be learned: pairs that pass the default policy
    kept = Counter(p["_concept"] for p in pairs if policy_allows(p))
    for c in CONCEPTS:
        assert kept[c["key"]] >= 4, ("too few usable pairs", c["key"], kept[c["key"]])
    for name, recs in (("corpus", [d["gov"] for d in docs]), ("pairs", pairs), ("qe", qe)):
        classes = {class_of(g) for g in recs}
        assert classes >= {"public", "community", "personal", "sacred", "(none)"}, (name, classes)
        assert any(g.get("contributor") == WITHDRAWN[0] for g in recs), name
        assert any(g.get("classification") == "community" and g.get("consent") not in LEDGER for g in recs), name


def class_table(recs):
    c = Counter(class_of(g) for g in recs)
    return {k: c.get(k, 0) for k in ["public", "community", "personal", "sacred", "(none)"]}


def summarise(docs, tests, qrels, pairs, qe, rr, persona, comp, text):
    run = bm25_run(docs, tests)
    qids = [q["qid"] for q in tests]
    m_all = metrics(run, qrels, qids)
    named = {c["key"]: concept_words(c) for c in CONCEPTS}
    vocab_q = [q["qid"] for q in tests if set(words(q["query"])) & named[q["concept"]]]
    plain_q = [q["qid"] for q in tests if q["qid"] not in set(vocab_q)]
    return {
        "files": {
            "corpus/*.md": len(docs),
            "queries/test.jsonl": len(tests),
            "qrels/test.qrels": len(qrels),
            "pairs/pairs.jsonl": len(pairs),
            "query-expansion/qe.jsonl": len(qe),
            "reranker/judgments.jsonl": len(rr),
            "persona/{train,valid,test}.jsonl": "/".join(str(len(persona[s])) for s in ("train", "valid", "test")),
            "completions/{train,valid,test}.jsonl": "/".join(str(len(comp[s])) for s in ("train", "valid", "test")),
            "text/{train,valid,test}.jsonl": "/".join(str(len(text[s])) for s in ("train", "valid", "test")),
        },
        "reranker_queries": len({r["query"] for r in rr}),
        "corpus_kinds": Counter(d["kind"] for d in docs),
        "qrels_grades": Counter(r for _, _, r in qrels),
        "classes": {"corpus": class_table([d["gov"] for d in docs]), "pairs": class_table(pairs),
                    "qe": class_table(qe), "reranker": class_table(rr)},
        "kept": {"corpus": sum(policy_allows(d["gov"]) for d in docs), "pairs": sum(policy_allows(p) for p in pairs),
                 "qe": sum(policy_allows(r) for r in qe), "reranker": sum(policy_allows(r) for r in rr)},
        "withdrawn": {"corpus": sum(d["gov"].get("contributor") == WITHDRAWN[0] for d in docs),
                      "pairs": sum(p.get("contributor") == WITHDRAWN[0] for p in pairs),
                      "qe": sum(r.get("contributor") == WITHDRAWN[0] for r in qe)},
        "missing_consent": {"corpus": sum(d["gov"].get("classification") == "community" and d["gov"].get("consent") not in LEDGER for d in docs),
                            "pairs": sum(p.get("classification") == "community" and p.get("consent") not in LEDGER for p in pairs),
                            "qe": sum(r.get("classification") == "community" and r.get("consent") not in LEDGER for r in qe)},
        "pairs_with_negatives": sum(1 for p in pairs if p.get("negatives")),
        "bm25": m_all,
        "bm25_vocab": metrics(run, qrels, vocab_q), "n_vocab": len(vocab_q),
        "bm25_plain": metrics(run, qrels, plain_q), "n_plain": len(plain_q),
        "modes": Counter(d["mode"] for d in docs if d["kind"] == "concept"),
    }


def print_report(s):
    print("files:")
    for k, v in s["files"].items():
        print(f"  {k:40s} {v}")
    print("corpus kinds:", dict(s["corpus_kinds"]), " qrels grades:", dict(sorted(s["qrels_grades"].items())))
    print("concept documents by naming mode:", dict(s["modes"]))
    print("classification (public / community / personal / sacred / none):")
    for k, v in s["classes"].items():
        print(f"  {k:10s} " + " / ".join(str(x) for x in v.values()) + f"   kept by default policy: {s['kept'][k]}")
    print("withdrawn-contributor records:", s["withdrawn"], " community with consent missing from ledger:", s["missing_consent"])
    print("pairs with hard negatives:", s["pairs_with_negatives"])
    for name, key, n in (("all", "bm25", len([1])), ("vocabulary", "bm25_vocab", s["n_vocab"]), ("plain", "bm25_plain", s["n_plain"])):
        label = f"BM25 on test queries ({name}{'' if name == 'all' else ', n=%d' % n}):"
        print(label, ", ".join(f"{k} {v:.4f}" for k, v in s[key].items()))


# --------------------------------------------------------------------------------------------
# Dataset card
# --------------------------------------------------------------------------------------------
CARD = """# Ostrel Valley Keeping House — tunelab's bundled datasets

**Everything in this folder is fictional and was written by the tunelab authors.** The Ostrel Valley,
its villages (Tamsel, Upper Brack, Linnet Bend), its people and all forty of its words are invented.
They are not words of any real language, and no real community, Indigenous or otherwise, is described.
The "sacred" records are placeholders that stand for material a community would hold back; they
contain no content.

- License: **CC0-1.0** (public domain dedication). Use it for anything.
- Generated by `python3 scripts/make_datasets.py` (Python 3 standard library only, seed {seed}).
  Running it again rewrites byte-identical files; `python3 scripts/make_datasets.py --check` also
  prints the counts and the BM25 baseline below.

## Why it looks the way it does

A small community archive whose users search with the community's own words: the case where tuning
an embedding model on the local vocabulary should help most, and where an off-the-shelf English model
(all-MiniLM-L6-v2) and plain BM25 both struggle.

- **Vocabulary.** 40 concepts in seven groups (seasonal practices, tools, places, foods, crafts,
  governance customs, weather signs), each with an invented term, an older alias (a second, unrelated
  name, as a dialect or an older generation would use), a few plain-English names and a one-line
  gloss (table below). Test queries mostly use the term; the term is in none of its concept's six
  documents for 16 concepts, in one for 16 and in two for 8. The others use the alias (one or two
  documents per concept) or only plain words.
- **Documents.** Each concept has six markdown documents, one per aspect: history, how-to, season,
  materials, stories, rules. A document names its concept by the term, by the alias, or only in plain
  words (concept documents by naming mode: {modes}), so lexical matching on the invented word finds some
  documents and misses the rest. Documents cross-reference other concepts by name, which adds more
  lexical near-misses.
- **Held-out aspects.** For each concept three aspects are held out: their documents are the rel-2
  answers of the test queries and appear nowhere on the training side (not as pair documents, not as
  positives or negatives, not in reranker, query-expansion or persona data). The other three documents
  feed the training files. A tuned encoder has to carry the vocabulary it learned from those documents
  to documents it never saw.
- **Distractors.** {n_distractors} near-miss documents share surface words with a concept but are about something
  else (a ferry called *Velmora*, the *Tarrowick* family reunion, a county fish-pass inspection, a
  garden-bonfire notice, ...). They are judged rel 0 for that concept's test queries.

## Files

| file | format | records |
| --- | --- | --- |
| `corpus/ovd-NNNN.md` | markdown, one document per file: YAML front matter (`id`, `classification`, `contributor`, `consent`, `source`), then `# Title`, a lead paragraph (most documents) and 2–4 `##` sections; body 80–300 words | {n_docs} ({kinds}) |
| `queries/test.jsonl` | `{{"qid", "query"}}` held-out test queries | {n_tests} ({n_vocab} use the invented vocabulary, {n_plain} plain language) |
| `qrels/test.qrels` | TREC qrels `qid 0 docid rel`: 2 answers the query, 1 same concept / other aspect, 0 judged near-miss (distractor, sacred placeholder, same-group concept) | {n_qrels} judgments ({grades}) |
| `pairs/pairs.jsonl` | `{{"id", "query", "positive", "negatives"?, "doc_id", governance}}`; `positive` = title + one section of corpus document `doc_id`; `negatives` = passages of other concepts (or distractors) | {n_pairs} ({n_neg} with hard negatives) |
| `query-expansion/qe.jsonl` | QMD records `{{"id", "query", "output": [["lex", ..], ["vec", ..], ["hyde", ..]], governance}}` | {n_qe} |
| `reranker/judgments.jsonl` | `{{"id", "query", "document", "relevant": 0/1/2, "doc_id", governance}}` for {n_rr_q} training queries: each concept's query of each training aspect (120), then {rr_more} more per training aspect typed as users type (the valley word, its alias or plain words, with an aspect frame or keyword), appended after them and judged the same way plus one document of another group; `document` is what QMD's reranker is sent for corpus document `doc_id` (its best 3600-character chunk: the whole markdown body without front matter). Per query: the aspect's document (2), the concept's two other training documents (1), a same-group concept's document of the same aspect and one of any aspect, sometimes a distractor or the sacred placeholder (0); then {rr_pipeline} hard negatives (0), 4 per training query, mined through QMD's pipeline (BM25 and MiniLM vector lists fused, `tunelab train rerank --mining-embedder`) over the judged training-side documents (`scripts/data/reranker-pipeline-negatives.jsonl`; BM25's own negatives taught the opposite of what separates the pipeline's candidates) | {n_rr} |
| `persona/{{train,valid,test}}.jsonl` | MLX-LM chat `{{"messages": [system, user, assistant, ...], governance}}`: Wren, the archive's librarian, cites titles and refuses sacred material | {persona} |
| `completions/{{train,valid,test}}.jsonl` | MLX-LM `{{"prompt", "completion", governance}}` | {comp} |
| `text/{{train,valid,test}}.jsonl` | MLX-LM `{{"text", governance}}` | {text} |
| `governance/policy.toml` | the default policy: `forbid = ["sacred"]`, `require_consent = ["community", "personal"]`, ledger and withdrawal files, `treat_unclassified_as_public = false` | — |
| `governance/consent-ledger.jsonl` | `{{"consent", "contributor", "scope", "granted"}}` | {n_ledger} |
| `governance/withdrawals.jsonl` | `{{"contributor", "withdrawn", "reason"}}` | {n_withdrawals} |

Every record has an `id` and the governance fields `classification`, `contributor`, `consent` (a ledger
id or `null`) and `source`, except the few records deliberately left without `classification`, and
except the test queries and qrels, whose formats are fixed (`{{"qid", "query"}}`, TREC qrels).
Persona, completions and text records are public, contributed by the tunelab authors.

## Governance mix

| file | public | community | personal | sacred | no classification | kept by the default policy |
| --- | --- | --- | --- | --- | --- | --- |
{class_rows}

Built in on purpose, so the policy has every case to decide: community records whose consent id is
missing from the ledger ({missing}), records by a contributor on the withdrawal list ({withdrawn}; he
also has a ledger consent, so the withdrawal must win), records with no classification, and sacred
placeholders reading `{sacred}`. No sacred document is relevant (rel > 0) to any test query.
"Kept" above is this script's own reading of the default policy, for cross-checking `tunelab data inspect`.

## Leakage guarantees (asserted by the script)

- No test query text occurs, case- and whitespace-insensitively, anywhere on the training side: pair
  queries, positives and negatives, query-expansion queries and outputs, reranker queries and
  documents, persona messages, completions, text.
- No rel-2 document of a test query (no held-out document at all) is a pair `doc_id`, and no passage
  of a held-out document appears as a positive or negative.
- Every concept keeps at least four training pairs after the default policy.

## Baseline: BM25 on the test queries

Pure-Python BM25 inside the script (SQLite FTS5's formula: k1 = 1.2, b = 0.75, idf =
ln((N − n + 0.5)/(n + 0.5)); title and body indexed; lower-cased word tokens, no stemming, no stop
words; a document matches if it contains any query term; ties broken by document id as trec_eval does).
MRR@10 counts rel ≥ 1 as relevant, as trec_eval does by default (any document of the right concept);
"rel 2 only" is trec_eval's `-l 2`, which credits only the held-out document that answers the query.
nDCG@10 uses the grades as gains.

| queries | n | MRR@10 | MRR@10 (rel 2 only) | nDCG@10 | Recall@10 | Success@1 |
| --- | --- | --- | --- | --- | --- | --- |
{bm25_rows}

{dense}

## Vocabulary

| term | alias | group | meaning |
| --- | --- | --- | --- |
{vocab_rows}
"""

# Measured once, outside this script (it needs torch): all-MiniLM-L6-v2 through sentence-transformers
# 6.2 / torch 2.15 on this project's 2-core CPU, documents as title + body (max 256 tokens), cosine.
DENSE_NOTE = """## Dense retrieval check (all-MiniLM-L6-v2)

Measured once by the tunelab authors with sentence-transformers (not part of this script, which is
stdlib only): documents embedded as title + body (256 tokens), queries as typed, cosine similarity,
the same metrics as above. "Tuned" is MultipleNegativesRankingLoss (scale 20, in-batch negatives plus
the first hard negative of each pair) on the pairs the default policy keeps ({kept} of {total}), batch 32
with no duplicate texts in a batch, AdamW, 10% warm-up then linear decay, pairs truncated to 96 tokens.
p-values: two-sided paired randomization test over the 120 test queries (20,000 permutations).

| model | MRR@10 | MRR@10 (rel 2 only) | nDCG@10 |
| --- | --- | --- | --- |
{rows}

{comment}"""
DENSE_ROWS = [("BM25 (above)", None), ("all-MiniLM-L6-v2, base", "0.6456 | 0.2661 | 0.3525"),
              ("tuned, after 2 epochs (44 steps, peak lr 5e-5)",
               "**0.8339** (p < 0.0001) | **0.4318** (p < 0.0001) | **0.6428** (p < 0.0001)")]
DENSE_COMMENT = (
    "p < 0.0001: none of the 20,000 sign flips was as extreme. Per query (MRR@10), tuned against base:\n"
    "38 better, 74 equal, 8 worse. The schedule was planned for 6 epochs (132 steps); the numbers are\n"
    "those of the checkpoint after epoch 2. The rel-2-only gain is on documents no training record shows.\n"
    "A caution: an earlier version of this data (fewer pairs, no anchor pairs) trained for 2 epochs at a\n"
    "peak lr of 3e-5 (32 steps) got *worse* (MRR@10 0.65 to 0.52, rel 2 only 0.25 to 0.29): with\n"
    "too few steps the model seems to pick up the aspect words of the queries (history, season, ...)\n"
    "before the invented words. Train long enough to bind the vocabulary.")


def write_card(s, seed, n_ledger, n_withdrawals):
    cls_rows = []
    for k, v in s["classes"].items():
        cls_rows.append(f"| {k} | " + " | ".join(str(x) for x in v.values()) + f" | {s['kept'][k]} |")
    bm = []
    for name, key, n in (("all", "bm25", s["files"]["queries/test.jsonl"]), ("invented vocabulary", "bm25_vocab", s["n_vocab"]),
                         ("plain language", "bm25_plain", s["n_plain"])):
        m = s[key]
        bm.append(f"| {name} | {n} | {m['recip_rank@10']:.4f} | {m['recip_rank@10 (rel 2 only)']:.4f} | "
                  f"{m['ndcg_cut_10']:.4f} | {m['recall_10']:.4f} | {m['success_1']:.4f} |")
    vocab = [f"| {c['word']} | {c['alias']} | {c['cat']} | {c['gloss']} |" for c in CONCEPTS]
    f = s["files"]
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(s["corpus_kinds"].items()))
    grades = ", ".join(f"{v} × rel {k}" for k, v in sorted(s["qrels_grades"].items(), reverse=True))
    modes = ", ".join(f"{v} {k}" for k, v in sorted(s["modes"].items()))
    return CARD.format(
        seed=seed, modes=modes, n_distractors=s["corpus_kinds"]["distractor"], n_docs=f["corpus/*.md"], kinds=kinds,
        n_tests=f["queries/test.jsonl"], n_vocab=s["n_vocab"], n_plain=s["n_plain"], n_qrels=f["qrels/test.qrels"],
        grades=grades, n_pairs=f["pairs/pairs.jsonl"], n_neg=s["pairs_with_negatives"],
        n_qe=f["query-expansion/qe.jsonl"], n_rr=f["reranker/judgments.jsonl"], rr_pipeline=sum(1 for _ in open(RERANK_PIPELINE_NEGATIVES, encoding="utf-8")), rr_more=RERANK_MORE,
        n_rr_q=s["reranker_queries"],
        persona=f["persona/{train,valid,test}.jsonl"] + " (train/valid/test)",
        comp=f["completions/{train,valid,test}.jsonl"], text=f["text/{train,valid,test}.jsonl"],
        n_ledger=n_ledger, n_withdrawals=n_withdrawals, class_rows="\n".join(cls_rows),
        missing=", ".join(f"{k} {v}" for k, v in s["missing_consent"].items()),
        withdrawn=", ".join(f"{k} {v}" for k, v in s["withdrawn"].items()), sacred=SACRED_TEXT,
        bm25_rows="\n".join(bm), dense=dense_note(s), vocab_rows="\n".join(vocab))


def dense_note(s):
    m = s["bm25"]
    rows = []
    for name, vals in DENSE_ROWS:
        if vals is None:
            vals = f"{m['recip_rank@10']:.4f} | {m['recip_rank@10 (rel 2 only)']:.4f} | {m['ndcg_cut_10']:.4f}"
        rows.append(f"| {name} | {vals} |")
    return DENSE_NOTE.format(kept=s["kept"]["pairs"], total=s["files"]["pairs/pairs.jsonl"],
                             rows="\n".join(rows), comment=DENSE_COMMENT)


# --------------------------------------------------------------------------------------------
def build(seed=SEED):
    rng = lambda part: random.Random(f"{seed}:{part}")
    plan = build_split(rng("split"))
    docs = build_corpus(rng("corpus"), plan)
    tests, qrels = build_test(rng("test"), docs)
    df = Counter(w for d in docs for w in set(words(d["title"] + " " + doc_body(d))))
    pairs = build_pairs(rng("pairs"), docs, df)
    tnorm = {norm(q["query"]) for q in tests}
    qe = build_qe(rng("qe"), plan, tnorm)
    rr, drawn = build_reranker(rng("reranker"), docs, plan)
    rr += build_reranker_more(rng("reranker-more"), docs, plan, rr, drawn, tnorm)
    rr += reranker_pipeline_negatives(docs, rr)
    persona = build_persona(rng("persona"), docs, plan)
    comp, text = build_small(rng("small"), plan)
    return docs, tests, qrels, pairs, qe, rr, persona, comp, text


def small_gov(kind, split, i):
    return {"id": f"ov-{kind}-{split}-{i + 1:03d}", "classification": "public", "contributor": PROJECT,
            "consent": None, "source": "generated:scripts/make_datasets.py"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="print counts and the BM25 baseline")
    ap.add_argument("--out", default=OUT, help="output folder (default: datasets/ in the repository)")
    args = ap.parse_args(argv)
    docs, tests, qrels, pairs, qe, rr, persona, comp, text = build()
    run_checks(docs, tests, qrels, pairs, qe, rr, persona, comp, text)
    # everything is built and checked in memory before the first file is written
    ledger, withdrawals, policy = governance_files()
    summary = summarise(docs, tests, qrels, pairs, qe, rr, persona, comp, text)
    card = write_card(summary, SEED, len(ledger), len(withdrawals))
    out = args.out
    corpus_dir = os.path.join(out, "corpus")
    if os.path.isdir(corpus_dir):
        for f in os.listdir(corpus_dir):
            if f.endswith(".md"):
                os.remove(os.path.join(corpus_dir, f))
    for d in sorted(docs, key=lambda d: d["id"]):
        write_text(os.path.join(corpus_dir, d["id"] + ".md"), doc_markdown(d))
    write_jsonl(os.path.join(out, "queries", "test.jsonl"), [{"qid": q["qid"], "query": q["query"]} for q in tests])
    write_text(os.path.join(out, "qrels", "test.qrels"), "".join(f"{q} 0 {d} {r}\n" for q, d, r in qrels))
    write_jsonl(os.path.join(out, "pairs", "pairs.jsonl"), pairs)
    write_jsonl(os.path.join(out, "query-expansion", "qe.jsonl"), qe)
    write_jsonl(os.path.join(out, "reranker", "judgments.jsonl"), rr)
    for s in ("train", "valid", "test"):
        write_jsonl(os.path.join(out, "persona", s + ".jsonl"),
                    [dict({"messages": m}, **small_gov("persona", s, i)) for i, m in enumerate(persona[s])])
        write_jsonl(os.path.join(out, "completions", s + ".jsonl"),
                    [dict(r, **small_gov("completions", s, i)) for i, r in enumerate(comp[s])])
        write_jsonl(os.path.join(out, "text", s + ".jsonl"),
                    [dict(r, **small_gov("text", s, i)) for i, r in enumerate(text[s])])
    write_jsonl(os.path.join(out, "governance", "consent-ledger.jsonl"), ledger)
    write_jsonl(os.path.join(out, "governance", "withdrawals.jsonl"), withdrawals)
    write_text(os.path.join(out, "governance", "policy.toml"), policy)
    write_text(os.path.join(out, "README.md"), card)
    if args.check:
        print_report(summary)
    else:
        print(f"wrote {len(docs)} documents, {len(tests)} test queries, {len(pairs)} pairs, {len(qe)} query-expansion "
              f"records, {len(rr)} reranker judgments into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
