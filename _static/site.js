// Stacked rows: every table with three or more columns gets the class "stack-narrow",
// and each of its cells a copy of its column's header (hidden unless stacked). The
// table is stacked, one block per row with each cell under its column's name, when the
// screen is narrow or when the table does not fit its column (formulas, long names).
const NARROW = 720;

function label(table) {
  const head = table.querySelector("thead tr");
  if (!head || head.cells.length < 3) return false;
  table.classList.add("stack-narrow");
  for (const row of table.querySelectorAll("tbody tr")) {
    Array.from(row.cells).forEach((cell, i) => {
      // an empty cell (the reference row's ratio, say) is left out of a stacked row
      if (!cell.textContent.trim() && !cell.querySelector("img, mjx-container")) {
        cell.classList.add("blank");
      }
      const header = head.cells[i];
      if (!header || !header.textContent.trim()) return;
      const name = document.createElement("span");
      name.className = "stack-label";
      name.setAttribute("aria-hidden", "true");
      name.innerHTML = header.innerHTML;
      cell.prepend(name);
    });
  }
  return true;
}

function restack() {
  for (const table of document.querySelectorAll("table.stack-narrow")) {
    table.classList.remove("stacked");
    const box = table.parentElement;
    const tooWide = table.getBoundingClientRect().width > box.clientWidth + 1;
    if (window.innerWidth <= NARROW || tooWide) table.classList.add("stacked");
  }
  markScrolling();
}

// A formula wider than its box scrolls inside it (site.css): a displayed one always may;
// one in a stacked table is marked "wide" when it reaches past its cell. The class
// "scrolls" shades the right edge of one that does, so a reader on a phone sees that
// there is more of it.
function markScrolling() {
  for (const math of document.querySelectorAll("article table.stacked mjx-container")) {
    math.classList.remove("wide");
    const cell = math.closest("td, th");
    const edge = cell.getBoundingClientRect().right - parseFloat(getComputedStyle(cell).paddingRight);
    math.classList.toggle("wide", math.getBoundingClientRect().right > edge + 1);
  }
  const boxes = 'article mjx-container[display="true"], article mjx-container.wide';
  for (const math of document.querySelectorAll("article mjx-container")) {
    const box = math.matches(boxes);
    math.classList.toggle("scrolls", box && math.scrollWidth > math.clientWidth + 2);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("article table").forEach(label);
  restack();
});
window.addEventListener("load", () => {
  restack();
  // formulas change the widths once MathJax has typeset them
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
    MathJax.startup.promise.then(restack);
  }
});
window.addEventListener("resize", restack);
