// Keyboard shortcuts for the Label tab: 1 = A, 2 = B, 3 = tie, 4 = both bad, s = skip.
// Keys typed into a text field are left alone, and nothing fires unless the Label tab is on screen.
(function () {
  const keys = { "1": "vote-a", "2": "vote-b", "3": "vote-tie", "4": "vote-bad", "s": "vote-skip" };
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    const target = event.target;
    if (target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.isContentEditable)) return;
    const id = keys[event.key.toLowerCase()];
    if (!id) return;
    const button = document.getElementById(id);
    if (!button || button.offsetParent === null || button.disabled) return;
    event.preventDefault();
    button.click();
  });
})();
