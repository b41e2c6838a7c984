// Model output -> safe HTML: Markdown (marked), math (KaTeX), then DOMPurify over the
// whole result. Raw HTML in the model's text is shown as text, never parsed, and DOMPurify
// is the second line of defence. Code blocks are highlighted after insertion (highlight.js
// writes escaped text only).

/* global marked, DOMPurify, katex, hljs */

const OPEN = "\uE000";  // private-use characters: Markdown leaves them alone
const CLOSE = "\uE001";

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  }[c]));
}

let configured = false;

function configure() {
  if (configured) return;
  configured = true;
  marked.use({
    gfm: true,
    renderer: {
      html(token) { return escapeHtml(token.text ?? token.raw ?? ""); },
    },
  });
  // links the model writes open in a new tab and cannot reach back into this page
  DOMPurify.addHook("afterSanitizeAttributes", (node) => {
    if (node.tagName === "A" && node.hasAttribute("href")) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  });
}

// Math delimiters R1 writes, longest first. Inline `$...$` must hug its content, so prices
// ("$5 and $10") stay text.
const MATH = [
  { re: /^\$\$([\s\S]+?)\$\$/, display: true },
  { re: /^\\\[([\s\S]+?)\\\]/, display: true },
  { re: /^\\\(([\s\S]+?)\\\)/, display: false },
  { re: /^\$(?=\S)([^$\n]*?\S)\$(?!\d)/, display: false },
];

// Pull math out of the text (outside code) before Markdown sees it, which would eat its
// backslashes and underscores; placeholders mark where each formula goes back.
function protectMath(text) {
  const formulas = [];
  let out = "";
  let i = 0;
  let atLineStart = true;
  while (i < text.length) {
    const rest = text.slice(i);
    const fence = atLineStart && rest.match(/^( {0,3})(`{3,}|~{3,})[^\n]*\n?/);
    if (fence) {  // a fenced code block: copy it whole, up to its closing fence
      const marker = fence[2];
      const body = rest.slice(fence[0].length);
      const close = body.search(new RegExp(`^ {0,3}${marker[0]}{${marker.length},}[ \\t]*$`, "m"));
      const len = close < 0 ? rest.length : fence[0].length + close;
      out += rest.slice(0, len);
      i += len;
      atLineStart = text[i - 1] === "\n" || i === 0;
      continue;
    }
    const code = rest.match(/^(`+)[\s\S]*?[^`]\1(?!`)/);
    if (code) {  // an inline code span
      out += code[0];
      i += code[0].length;
      atLineStart = false;
      continue;
    }
    let matched = false;
    for (const { re, display } of MATH) {
      const m = rest.match(re);
      if (m) {
        formulas.push({ tex: m[1], display });
        out += `${OPEN}${formulas.length - 1}${CLOSE}`;
        i += m[0].length;
        matched = true;
        break;
      }
    }
    if (matched) { atLineStart = false; continue; }
    if (text[i] === "\\" && i + 1 < text.length) {  // an escaped character stays as written
      out += text.slice(i, i + 2);
      i += 2;
      atLineStart = false;
      continue;
    }
    atLineStart = text[i] === "\n";
    out += text[i];
    i += 1;
  }
  return { text: out, formulas };
}

function mathHtml({ tex, display }) {
  return katex.renderToString(tex, { displayMode: display, throwOnError: false, trust: false,
                                     output: "htmlAndMathml" });
}

/** Markdown with math -> sanitised HTML (a string). */
export function renderMarkdown(source) {
  configure();
  const { text, formulas } = protectMath(source);
  let html = marked.parse(text);
  html = html.replace(new RegExp(`${OPEN}(\\d+)${CLOSE}`, "g"),
                      (_, n) => mathHtml(formulas[Number(n)]));
  return DOMPurify.sanitize(html);
}

/** Put rendered Markdown into ``element`` and highlight its code blocks. */
export function renderInto(element, source) {
  element.innerHTML = renderMarkdown(source);
  for (const block of element.querySelectorAll("pre code")) {
    hljs.highlightElement(block);
  }
}
