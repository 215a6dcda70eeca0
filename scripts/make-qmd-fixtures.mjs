#!/usr/bin/env node
// Make tests/fixtures/qmd/pipeline.json by running QMD's own functions (tobi/qmd src/store.ts)
// on generated inputs: chunk boundaries (chunkDocument), break points (scanBreakPoints), code
// fences (findCodeFences), FTS5 query strings (buildFTS5Query), fused lists
// (reciprocalRankFusion + getHybridRrfWeights) and titles (extractTitle).
//
// Nothing of QMD is copied into this repository: the script reads the named top-level functions
// out of a QMD checkout at run time, strips their TypeScript types with esbuild and evaluates them.
//
//   git clone https://github.com/tobi/qmd ../qmd && git -C ../qmd checkout v2.8.3
//   npm install --prefix /tmp/qmdfx esbuild
//   NODE_PATH=/tmp/qmdfx/node_modules node scripts/make-qmd-fixtures.mjs [../qmd/src/store.ts]
//
// tests/qmd_pipeline_parity.rs compares our port with the file.
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const require = createRequire(import.meta.url);
const esbuild = require("esbuild");
const repo = join(dirname(fileURLToPath(import.meta.url)), "..");
const storePath = process.argv[2] ?? join(repo, "..", "qmd", "src", "store.ts");
const src = readFileSync(storePath, "utf8");
const lines = src.split("\n");

// A top-level declaration from its first line to the first line that closes it at column 0.
function grab(name) {
  const start = lines.findIndex(l => new RegExp(`^(export )?(async )?(function|const|let) ${name}\\b`).test(l));
  if (start < 0) throw new Error(`${name} not found in ${storePath}`);
  if (/;\s*(\/\/.*)?$/.test(lines[start]) && !/[\[{(]\s*(\/\/.*)?$/.test(lines[start])) return lines[start];
  let end = start;
  while (!/^(\}|\]|\});?\s*$/.test(lines[end]) || end === start) end++;
  return lines.slice(start, end + 1).join("\n");
}

const names = [
  "CHUNK_SIZE_TOKENS", "CHUNK_OVERLAP_TOKENS", "CHUNK_SIZE_CHARS", "CHUNK_OVERLAP_CHARS", "CHUNK_WINDOW_TOKENS", "CHUNK_WINDOW_CHARS",
  "BREAK_PATTERNS", "scanBreakPoints", "findCodeFences", "isInsideCodeFence", "findBestCutoff", "isSurrogatePairBoundary",
  "adjustSurrogateBoundary", "chunkDocumentWithBreakPoints", "chunkDocument",
  "CJK_CHAR_PATTERN", "CJK_RUN_PATTERN", "normalizeCjkForFTS", "containsCjk", "sanitizeFTS5Phrase", "sanitizeFTS5Term",
  "isHyphenatedToken", "sanitizeHyphenatedTerm", "isDottedToken", "sanitizeDottedTerm", "buildFTS5Query",
  "reciprocalRankFusion", "getHybridRrfWeights", "titleExtractors", "extractTitle",
];
const ts = names.map(grab).join("\n\n").replace(/^export /gm, "");
const { code } = esbuild.transformSync(ts, { loader: "ts", format: "esm" });
const qmd = new Function(`${code}\nreturn { chunkDocument, scanBreakPoints, findCodeFences, buildFTS5Query, reciprocalRankFusion, getHybridRrfWeights, extractTitle, CHUNK_SIZE_CHARS, CHUNK_OVERLAP_CHARS, CHUNK_WINDOW_CHARS };`)();

// Deterministic generator (xorshift) of markdown-like texts.
let state = 0x2545f491n;
function rnd(n) {
  state ^= (state << 13n) & 0xffffffffn;
  state ^= state >> 17n;
  state ^= (state << 5n) & 0xffffffffn;
  return Number(state % BigInt(n));
}
const pieces = [
  "# Heading one\n", "## Second level\n", "### Third\n", "#### Fourth\n", "plain prose with several words in it. ", "more prose here ",
  "\n\n", "\n\n\n", "- bullet item\n", "* star item\n", "12. numbered\n", "---\n", "***\n", "___ \n",
  "```js\nconst x = 1;\n\n# inside fence\n```\n", "```\nunclosed fence ", "é", "東京タワー", "😀", "line\r\n", "\r\n\r\n", "\u00a0", "\n",
  "-not a list\n", "##no space\n",
];
function text(n) {
  let s = "";
  for (let i = 0; i < n; i++) s += pieces[rnd(pieces.length)];
  return s;
}

const chunks = [];
const params = [[200, 30, 80], [97, 0, 13], [400, 60, 160], [60, 59, 40], [1000, 150, 400]];
for (let i = 0; i < 30; i++) {
  const t = text(20 + i * 9);
  chunks.push({ text: t, cases: params.map(([max, overlap, window]) => ({ max, overlap, window, chunks: qmd.chunkDocument(t, max, overlap, window).map(c => [c.pos, c.text.length]) })) });
}
// QMD's defaults on long documents.
for (let i = 0; i < 4; i++) {
  const t = text(900 + i * 300);
  const [max, overlap, window] = [qmd.CHUNK_SIZE_CHARS, qmd.CHUNK_OVERLAP_CHARS, qmd.CHUNK_WINDOW_CHARS];
  chunks.push({ text: t, cases: [{ max, overlap, window, chunks: qmd.chunkDocument(t).map(c => [c.pos, c.text.length]) }] });
}

const breakpoints = [];
for (let i = 0; i < 20; i++) {
  const t = text(10 + i * 3);
  breakpoints.push({ text: t, points: qmd.scanBreakPoints(t).map(b => [b.pos, b.score, b.type]), fences: qmd.findCodeFences(t).map(f => [f.start, f.end]) });
}

const ftsQueries = [
  "performance -sports", "\"machine learning\"", "multi-agent memory", "DEC-0054", "-multi-agent", "2026.4.10", "v1.2 -3.0",
  "Don't PANIC!", "東京 tower", "  ?!  ", "kessing cautionary tales", "tolleck technique for beginners", "a \"b c\" -\"d e\" f-g-h",
  "C++ templates", "node.js v20", "-a -b", "foo -", "\"unclosed phrase", "under_score snake_case", "ÄRGER über Öl", "x - y", "gpt-4o mini",
  "what's the e-mail", "-", "\"\"", "trailing-", "-leading", "a.b.", ".hidden", "x AND y OR z NOT w", "NEAR(a b)", "col:value", "^start", "q*",
];
const fts = ftsQueries.map(q => ({ query: q, fts: qmd.buildFTS5Query(q) }));

const rrf = [];
const docsPool = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"];
for (let i = 0; i < 20; i++) {
  const nLists = 1 + rnd(5);
  const lists = [];
  const meta = [];
  for (let l = 0; l < nLists; l++) {
    const len = rnd(8);
    const seen = new Set();
    const list = [];
    for (let k = 0; k < len; k++) {
      const d = docsPool[rnd(docsPool.length)];
      if (!seen.has(d)) { seen.add(d); list.push(d); }
    }
    lists.push(list);
    meta.push({ queryType: ["original", "lex", "vec", "hyde"][rnd(4)] });
  }
  const weights = qmd.getHybridRrfWeights(meta);
  const fused = qmd.reciprocalRankFusion(lists.map(l => l.map(file => ({ file, displayPath: file, title: file, body: "", score: 0 }))), weights);
  rrf.push({ lists, query_types: meta.map(m => m.queryType), weights, fused: fused.map(r => [r.file, r.score]) });
}

const titleCases = [
  ["# My Title\n\nSome content here.", "file.md"], ["## My Subtitle\n\nSome content here.", "file.md"], ["Just text", "my-document.md"],
  ["# Notes\n\n## Actual Title\n\nContent", "file.md"], ["# 📝 Notes\n\n## Meeting Summary", "file.md"], ["### deep\n## Second\n# First", "a/b.md"],
  ["#NoSpace\ntext", "dir/x.y.md"], ["intro\n#   Spaced   \n", "n.md"], ["# \n## real", "e.md"], ["#\n\nTitle after blank", "f.md"],
  ["# Notes\nno second", "g.md"], ["front\r\n# CRLF title\r\nbody", "h.md"], ["", "dir.v2/file"], ["## a ## b", "i.md"],
];
const titles = titleCases.map(([content, file]) => ({ content, file, title: qmd.extractTitle(content, file) }));

const out = {
  source: "tobi/qmd src/store.ts v2.8.3 (HEAD dbfd0b4736aeaf761d1a16ca8e424f071df8feb9), evaluated by scripts/make-qmd-fixtures.mjs",
  chunks, breakpoints, fts, rrf, titles,
};
mkdirSync(join(repo, "tests", "fixtures", "qmd"), { recursive: true });
const dest = join(repo, "tests", "fixtures", "qmd", "pipeline.json");
writeFileSync(dest, JSON.stringify(out, null, 0) + "\n");
console.log(`wrote ${dest}: ${chunks.length} chunkings, ${breakpoints.length} break-point scans, ${fts.length} FTS5 queries, ${rrf.length} fusions, ${titles.length} titles`);
