"""Downstream texts with labels: VQA-like, VizWiz-like, SNLI-VE-like and MM-IMDB-like.

Labels come from the scene and are drawn so that the text alone cannot give them away:
yes/no is 50/50, counts are drawn by a target answer, "no" answers are hard negatives
(a colour present elsewhere in the image, a class present in another colour), SNLI-VE
labels are balanced per image and predicates appear under more than one label. Ten
annotators answer each question; each agrees with the truth at a per-question rate, the
others confuse neighbouring colours, counts off by one, siblings and hypernyms.
"""

from __future__ import annotations

from collections import Counter

from vlpdist.shards.schema import SNLI_LABELS
from vlpdist.shards.synthetic import text as T
from vlpdist.shards.synthetic.captions import Writer, area
from vlpdist.shards.synthetic.scenes import ImageScene

ANSWER_TYPE_P = {"yes/no": 0.38, "number": 0.12, "other": 0.5}  # VQA v2's shares
COUNT_TARGET_P = (0.1, 0.35, 0.3, 0.15, 0.1)  # answers 0..4
BLUR_UNANSWERABLE = 0.6  # VizWiz images blurrier than this cannot be answered
H = T.HYPOTHESIS_TEMPLATES


class TaskWriter(Writer):
    # -- ten annotators
    def answers(self, truth: str, kind: str, ambiguous=(), agreement: float | None = None):
        m = self.cfg.answer_agreement if agreement is None else agreement
        # per-question agreement; floored so that the majority stays right, as in VQA
        q = max(0.6, self.rng.beta(1 + 10 * m, 1 + 10 * (1 - m)))
        out = []
        for _ in range(10):
            if self.chance(q):
                out.append(truth)
            elif ambiguous and self.chance(0.6):
                out.append(self.pick(ambiguous))
            else:
                out.append(self.confuse(truth, kind))
        return out

    def confuse(self, truth: str, kind: str) -> str:
        if kind == "yes/no":
            return "no" if truth == "yes" else "yes"
        if kind == "number":
            return str(max(0, int(truth) + self.pick((-1, 1))))
        if truth in T.COLORS:
            k = T.COLORS.index(truth)
            near = [j for j in (k - 1, k + 1) if 0 <= j < self.w.num_colors]
            return T.COLORS[self.pick(near) if self.chance(0.7) else self.other_color({k})]
        if truth in T.SIZES:
            return T.SIZES[1 - T.SIZES.index(truth)]
        names = [row[1] for row in self.w.class_table]
        if truth not in names:
            return truth
        c = names.index(truth)
        sibs = [s for s in range(self.w.num_classes) if s != c and self.hyper(s) == self.hyper(c)]
        r = self.rng.random()
        if r < 0.5 and sibs:
            return self.word(self.pick(sibs))
        return self.hyper(c) if r < 0.8 else self.w.class_table[c][3][0]

    # -- VQA-like
    def vqa(self, sc: ImageScene, n: int) -> list[dict]:
        out = []
        for j in range(n):
            atype = self.pick_weighted(ANSWER_TYPE_P)
            ask = {"yes/no": self.ask_yesno, "number": self.ask_number, "other": self.ask_other}
            text, truth, ambiguous = ask[atype](sc)
            answers = self.answers(truth, atype, ambiguous)
            out.append(
                {
                    "kind": "question",
                    "text": text,
                    "question_id": sc.index * 10 + j,
                    "answers": answers,
                    "answer_type": atype,
                }
            )
        return out

    def pick_weighted(self, table: dict):
        keys = list(table)
        return keys[int(self.rng.choice(len(keys), p=list(table.values())))]

    def ask_yesno(self, sc: ImageScene):
        yes = self.chance(0.5)
        truth = "yes" if yes else "no"
        form = self.pick(["exists_attr", "exists_attr", "exists", "is_color", "is_size"])
        o = self.unique_obj(sc) if form in ("is_color", "is_size") else self.pick(sc.objects)
        if form == "is_size" and o.size == 1:  # medium has no word
            form = "is_color"
        tpl = T.VQA_TEMPLATES[form]
        if form == "exists":
            c = self.pick(sc.classes()) if yes else self.absent_class(sc)
            return tpl.format(a=T.article(self.word(c)), cls=self.word(c)), truth, ()
        if form == "is_size":
            size = T.SIZES[o.size // 2 if yes else 1 - o.size // 2]
            return tpl.format(cls=self.word(o.cls), size=size), truth, ()
        c, color = o.cls, o.color
        if not yes and form == "exists_attr" and self.chance(0.5):
            c = self.absent_class(sc)  # a colour that is here, on a class that is not
        elif not yes:  # a colour this class does not have here
            color = self.other_color({x.color for x in sc.objects if x.cls == c})
        cw = T.COLORS[color]
        return tpl.format(a=T.article(cw), color=cw, cls=self.word(c)), truth, ()

    def ask_number(self, sc: ImageScene):
        target = int(self.rng.choice(5, p=COUNT_TARGET_P))
        if target == 0:
            c = self.absent_class(sc)
            return T.VQA_TEMPLATES["count"].format(plural=self.plural(c)), "0", ()
        if self.chance(0.3):  # objects of one class and one colour
            pairs = Counter((o.cls, o.color) for o in sc.objects)
            (c, color), k = min(
                pairs.items(), key=lambda kv: (abs(kv[1] - target), self.rng.random())
            )
            text = T.VQA_TEMPLATES["count_color"].format(
                color=T.COLORS[color], plural=self.plural(c)
            )
            return text, str(k), ()
        counts = Counter(o.cls for o in sc.objects)
        c, k = min(counts.items(), key=lambda kv: (abs(kv[1] - target), self.rng.random()))
        return T.VQA_TEMPLATES["count"].format(plural=self.plural(c)), str(k), ()

    def ask_other(self, sc: ImageScene):
        form = self.pick(["what_color", "what_color", "which_super", "what_is_color"])
        if form != "what_color":  # name the object by its colour and superclass
            unique = [
                x
                for x in sc.objects
                if sum(
                    y.color == x.color and self.hyper(y.cls) == self.hyper(x.cls)
                    for y in sc.objects
                )
                == 1
            ]
            if unique:
                x = self.pick(unique)
                text = T.VQA_TEMPLATES[form].format(
                    super=self.hyper(x.cls), color=T.COLORS[x.color]
                )
                return text, self.word(x.cls), ()
        o = self.unique_obj(sc)
        others = sorted(
            {T.COLORS[x.color] for x in sc.objects if x.cls == o.cls} - {T.COLORS[o.color]}
        )
        return T.VQA_TEMPLATES["what_color"].format(cls=self.word(o.cls)), T.COLORS[o.color], others

    # -- VizWiz-like: one question per degraded image; blurred or off-target means unanswerable
    def vizwiz(self, sc: ImageScene) -> list[dict]:
        big = max(sc.objects, key=area)
        answerable = sc.blur < BLUR_UNANSWERABLE
        off_target = answerable and self.chance(0.12)
        form = self.pick_weighted({"what": 0.4, "what_color": 0.25, "is_this": 0.2, "count": 0.15})
        if off_target:  # asks about something the photo missed
            form, answerable = "what_color", False
        c = self.absent_class(sc) if off_target else big.cls
        if form == "what":
            text = T.VIZWIZ_TEMPLATES[self.pick(["what_this", "tell_me"])]
            truth, atype = self.word(c), "other"
        elif form == "what_color":
            text = T.VIZWIZ_TEMPLATES["what_color"].format(cls=self.word(c))
            truth, atype = T.COLORS[big.color], "other"
        elif form == "is_this":
            yes = self.chance(0.5)
            c = c if yes else self.absent_class(sc)
            text = T.VIZWIZ_TEMPLATES["is_this"].format(a=T.article(self.word(c)), cls=self.word(c))
            truth, atype = "yes" if yes else "no", "yes/no"
        else:
            text = T.VIZWIZ_TEMPLATES["count"].format(plural=self.plural(c))
            truth, atype = str(sc.count(c)), "number"
        if answerable:
            answers = [
                T.UNANSWERABLE if self.chance(0.08) else a for a in self.answers(truth, atype)
            ]
        else:
            guesses = [self.word(big.cls), T.UNSUITABLE]
            answers, atype = self.answers(T.UNANSWERABLE, "other", guesses, 0.7), "unanswerable"
        common = Counter(answers).most_common(1)[0][0]
        confidence = [  # VizWiz annotators say how sure they are; the dissenters less so
            "yes" if a == common and self.chance(0.85) else self.pick(("maybe", "no"))
            for a in answers
        ]
        record = {"kind": "question", "text": text, "question_id": sc.index, "answers": answers}
        return [
            {
                **record,
                "answer_confidence": confidence,
                "answerable": answerable,
                "answer_type": atype,
            }
        ]

    # -- SNLI-VE-like: a claim about the image, true, false, or extended by something unseeable
    def hypotheses(self, sc: ImageScene, n: int) -> list[dict]:
        offset = int(self.rng.integers(3))
        out = []
        for j in range(n):
            label = SNLI_LABELS[(offset + j) % 3]
            text = self.claim(sc, label)
            out.append(
                {"kind": "hypothesis", "text": text, "pair_id": sc.index * 10 + j, "label": label}
            )
        return out

    def claim(self, sc: ImageScene, label: str) -> str:
        o = self.pick(sc.objects)
        c, color, k, ground = o.cls, o.color, sc.count(o.cls), sc.stuff[0]
        wrong_color = self.other_color({x.color for x in sc.objects if x.cls == c})
        elsewhere = self.pick(s for s in range(T.GROUND_STUFF) if s != ground)
        if label == "entailment":
            form = self.pick(["exists", "count", "color", "place"])
            return self.say(form, c, color, k, stuff=ground)
        if label == "neutral":  # true as far as the image goes, plus what no image shows
            pred = self.pick(T.PREDICATES)
            if k > 1 and self.chance(0.5):
                return H["pred_plural"].format(
                    number=T.NUMBER_WORDS[k], plural=self.plural(c), pred=pred[1]
                )
            return H["pred"].format(color=T.COLORS[color], cls=self.word(c), pred=pred[0])
        form = self.pick(["exists", "count", "color", "place", "pred"])
        if form == "pred":
            pred = self.pick(T.PREDICATES)[0]
            return H["pred"].format(color=T.COLORS[wrong_color], cls=self.word(c), pred=pred)
        wrong_k = k - 1 if k >= 3 and self.chance(0.5) else k + 1 + int(self.rng.integers(2))
        return self.say(form, c, color if form == "place" else wrong_color, wrong_k, elsewhere)

    def say(self, form: str, c: int, color: int, k: int, stuff: int) -> str:
        cw = T.COLORS[color]
        if form == "count" and k >= 2:
            return H["count"].format(number=T.NUMBER_WORDS[k], plural=self.plural(c))
        if form == "color":
            return H["color"].format(cls=self.word(c), color=cw)
        if form == "place":
            pred = "is " + T.VISUAL_PREDICATE.format(stuff=T.STUFF[stuff])
            return H["pred"].format(color=cw, cls=self.word(c), pred=pred)
        return H["exists"].format(a=T.article(cw), color=cw, cls=self.word(c))

    # -- MM-IMDB-like: a plot; each genre shows in it, in the poster's objects, or both
    def plot(self, sc: ImageScene) -> list[dict]:
        keywords = [kw for g in sc.plot_genres for kw in self.w.genres[g][2]]
        if self.chance(0.15):  # a red herring from any genre
            keywords.append(self.pick(self.pick(self.w.genres)[2]))
        keywords = keywords or list(T.GENERIC_KEYWORDS)
        sentences = []
        for t in self.rng.permutation(len(T.PLOT_TEMPLATES))[: 2 + int(self.rng.integers(2))]:
            sentences.append(
                T.PLOT_TEMPLATES[t].format(
                    kw=self.pick(keywords),
                    kw2=self.pick(T.GENERIC_KEYWORDS),
                    who=self.someone(),
                    who2=self.someone(),
                    place=self.pick(T.PLACES),
                )
            )
        genres = [self.w.genres[g][0] for g in sc.genres]
        return [{"kind": "plot", "text": " ".join(sentences), "genres": genres}]

    def someone(self) -> str:
        who = self.pick(T.CHARACTERS)
        return f"{T.article(who)} {who}"
