// Answers read aloud by the browser's own speech synthesis (no server CPU; works offline on the
// student's device): each complete sentence is spoken as the answer streams, Markdown and LaTeX
// first turned into speakable text, code blocks skipped. Loaded into the page by tutor/page.py;
// `speakable` and `sentences` are also tested under Node.

const GREEK = ["alpha", "beta", "gamma", "delta", "epsilon", "theta", "lambda", "mu", "pi",
               "rho", "sigma", "tau", "phi", "omega"];
const SYMBOLS = [
  [/\\times|\\cdot/g, " times "], [/\\div/g, " divided by "], [/\\pm/g, " plus or minus "],
  [/\\leq?(?![a-z])/g, " is less than or equal to "], [/\\geq?(?![a-z])/g, " is greater than or equal to "],
  [/\\neq?(?![a-z])/g, " is not equal to "], [/\\approx/g, " is approximately "],
  [/\\infty/g, " infinity "], [/\\to|\\rightarrow/g, " to "], [/\\sin/g, " sine "],
  [/\\cos/g, " cosine "], [/\\tan/g, " tangent "], [/\\ln/g, " natural log of "],
  [/\\log/g, " log of "], [/\\lim/g, " the limit "], [/\\sum/g, " the sum "],
  [/\\[,;:! ]|~/g, " "], [/\\left|\\right/g, ""],
];

/** LaTeX (the inside of a formula) → words, for the common cases. */
function speakMath(tex) {
  let s = ` ${tex} `;
  s = s.replace(/\\d?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}/g, " $1 over $2 ");
  s = s.replace(/\\sqrt\s*\{([^{}]*)\}/g, " the square root of $1 ");
  s = s.replace(/\\int_\{?([^{}\s^]+)\}?\^\{?([^{}\s]+)\}?/g, " the integral from $1 to $2 of ");
  s = s.replace(/\\int/g, " the integral of ");
  s = s.replace(/\^\{?2\}?/g, " squared ").replace(/\^\{?3\}?/g, " cubed ");
  s = s.replace(/\^\{([^{}]*)\}|\^(\S)/g, (_, a, b) => ` to the power ${a || b} `);
  s = s.replace(/_\{([^{}]*)\}|_(\w)/g, (_, a, b) => ` sub ${a || b} `);
  for (const [pattern, words] of SYMBOLS) s = s.replace(pattern, words);
  for (const letter of GREEK) s = s.replace(new RegExp(`\\\\${letter}(?![a-z])`, "g"), ` ${letter} `);
  s = s.replace(/\s*=\s*/g, " equals ").replace(/\s*\+\s*/g, " plus ");
  s = s.replace(/(\S)\s*-\s*(\S)/g, "$1 minus $2").replace(/(^|\s)-\s*/g, "$1minus ");
  s = s.replace(/\s*<\s*/g, " is less than ").replace(/\s*>\s*/g, " is greater than ");
  s = s.replace(/\\[a-zA-Z]+/g, " ").replace(/[{}\\]/g, " ");
  return s.replace(/\s+/g, " ").trim();
}

/** Markdown with LaTeX → plain words a speech synthesizer reads well. */
function speakable(markdown) {
  let s = markdown.replace(/^<span class="mode-tag">[^<]*<\/span>\s*/, "");
  s = s.replace(/(^|\n)(```|~~~)[^\n]*\n[\s\S]*?(\n\2[^\n]*|$)/g, "$1");  // code blocks: skipped
  s = s.replace(/<[^>]+>/g, " ");
  // The page has already written single-dollar maths as \(…\) (tutor/math_text.py): a "$"
  // left is money, which speech synthesis reads as such.
  s = s.replace(/\$\$([\s\S]+?)\$\$|\\\[([\s\S]+?)\\\]|\\\(([\s\S]+?)\\\)/g,
                (_, a, b, c) => ` ${speakMath(a || b || c)} `);
  s = s.replace(/!\[([^\]]*)\]\([^)]*\)/g, "$1").replace(/\[([^\]]+)\]\([^)]*\)/g, "$1");
  s = s.replace(/`([^`]*)`/g, "$1");
  s = s.replace(/^\s{0,3}#{1,6}\s+/gm, "").replace(/^\s*>\s?/gm, "");
  s = s.replace(/^\s*(?:[-*+]|\d+[.)])\s+/gm, "");
  s = s.replace(/(\*\*|__)(.+?)\1/g, "$2").replace(/(\*|_)(\S(?:.*?\S)?)\1/g, "$2");
  s = s.replace(/^\s*([-*_])(\s*\1){2,}\s*$/gm, "");
  s = s.replace(/[ \t]+/g, " ").replace(/ ([.,!?;:])/g, "$1");
  return s.replace(/ ?\n ?/g, "\n").trim();
}

/** The complete sentences at the start of TEXT (those followed by a space or a line break),
 * and where the rest begins; a line ends a sentence too (a list item, a heading). */
function sentences(text) {
  const done = [];
  const pattern = /[^\n]*?(?:[.!?:;](?=\s)|\n)/g;
  let end = 0, match;
  while ((match = pattern.exec(text)) !== null) {
    if (match[0].length === 0) { pattern.lastIndex++; continue; }
    done.push(match[0]);
    end = pattern.lastIndex;
  }
  return {done, rest: end};
}

/** Speaks the last answer of the chat as it streams; one per page. */
class ReadAloud {
  constructor() { this.answer = -1; this.spoken = 0; this.silenced = false; }

  static text(message) {
    const c = message && message.content;
    return typeof c === "string" ? c
      : (c || []).filter((p) => p.type === "text").map((p) => p.text).join("");
  }

  say(text) {
    const words = speakable(text);
    if (words.replace(/\W/g, "")) window.speechSynthesis.speak(new SpeechSynthesisUtterance(words));
  }

  /** The chat changed: speak the newly completed sentences of its last answer (ON: the switch). */
  update(chat, on, flush) {
    const index = (chat || []).length - 1;
    const last = index >= 0 ? chat[index] : null;
    if (!last || last.role !== "assistant") return;
    const text = ReadAloud.text(last);
    if (index !== this.answer || text.length < this.spoken) {  // a new answer
      this.answer = index; this.spoken = 0; this.silenced = false;
    }
    const fresh = text.slice(this.spoken);
    // Off (switched on later: from the next sentence), or silenced: the updates that were on
    // their way when Stop was pressed must not be read.
    if (!on || this.silenced) { this.spoken = text.length; return; }
    const {done, rest} = sentences(fresh);
    for (const sentence of done) this.say(sentence);
    if (flush && rest < fresh.length) this.say(fresh.slice(rest));  // the answer's last words
    this.spoken += flush ? fresh.length : rest;
  }

  /** Silence the answer being read, and the rest of it. */
  stop() {
    this.silenced = true;
    window.speechSynthesis.cancel();
  }
}

if (typeof module !== "undefined") module.exports = {speakable, speakMath, sentences};
if (typeof window !== "undefined") window.readAloud = new ReadAloud();
