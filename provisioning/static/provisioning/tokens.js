// "Copy all" on the page that shows new registration tokens once. A file, not an inline script: the
// portal's Content-Security-Policy allows scripts from the site only. Without script the button stays
// hidden, and the CSV text on the page can be selected and copied by hand.
(function () {
  "use strict";
  var button = document.getElementById("copy-tokens");
  var text = document.getElementById("tokens-csv");
  var status = document.getElementById("copy-status");
  if (!button || !text || !status) {
    return;
  }
  button.hidden = false;
  function copied() {
    status.textContent = "Copied " + button.dataset.count + " token(s) as CSV (with its header line).";
  }
  function byHand() {
    var details = text.closest("details");
    if (details) {
      details.open = true;
    }
    text.focus();
    text.select();
    try {
      if (document.execCommand("copy")) {
        copied();
        return;
      }
    } catch (error) {
      // fall through: the text is selected for the user to copy
    }
    status.textContent = "The text below is selected: copy it with Ctrl+C.";
  }
  button.addEventListener("click", function () {
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text.value).then(copied, byHand);
    } else {
      byHand();
    }
  });
})();
