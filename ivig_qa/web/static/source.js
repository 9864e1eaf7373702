/*
 * The source page's "Back to the answer": "Read in context" opens the source in a new tab, which
 * has no history to go back to, so the tab closes itself; opened in the same tab, it goes back.
 * Without this script the link still leads to the chat.
 */
(function () {
  "use strict";
  var back = document.getElementById("back");
  var hint = document.getElementById("back-hint");
  if (!back) return;
  back.addEventListener("click", function (ev) {
    ev.preventDefault();
    if (window.history.length > 1) {
      window.history.back();
      return;
    }
    window.close();
    // Still open: the browser did not let the page close itself (it was not opened by a link).
    window.setTimeout(function () {
      if (hint) hint.hidden = false;
    }, 300);
  });
})();
