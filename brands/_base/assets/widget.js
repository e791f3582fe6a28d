// The code page's script. The page works without it; with it, forms are submitted in place,
// the resend countdown runs, and the shop page is told the outcome through postMessage,
// addressed to the shop's origin only (one of the brand's allowed origins, set by the server).
(function () {
  "use strict";

  function notifyShop() {
    var body = document.body;
    var outcome = body.getAttribute("data-outcome");
    var origin = body.getAttribute("data-parent-origin");
    if (!outcome || !origin || window.parent === window) {
      return;
    }
    window.parent.postMessage(
      { type: "orderguard." + outcome, verification_id: body.getAttribute("data-verification-id") },
      origin
    );
  }

  // The page's height, posted to the shop's origin whenever it changes, so the shop can size
  // its iframe: {type: "orderguard.resize", height: <CSS pixels>} (see the README's snippet).
  var lastHeight = 0;
  function reportHeight() {
    var origin = document.body.getAttribute("data-parent-origin");
    if (!origin || window.parent === window) {
      return;
    }
    var style = window.getComputedStyle(document.body);
    var height = Math.ceil(document.body.getBoundingClientRect().height +
      parseFloat(style.marginTop) + parseFloat(style.marginBottom));
    if (height === lastHeight) {
      return;
    }
    lastHeight = height;
    window.parent.postMessage({ type: "orderguard.resize", height: height }, origin);
  }
  if (window.ResizeObserver) {
    new ResizeObserver(reportHeight).observe(document.body);
  }
  window.addEventListener("load", reportHeight);

  var timer = null;
  function countdown() {
    if (timer) {
      clearInterval(timer);
      timer = null;
    }
    var seconds = document.querySelector("[data-og-seconds]");
    if (!seconds) {
      return;
    }
    var left = parseInt(seconds.textContent, 10) || 0;
    timer = setInterval(function () {
      left -= 1;
      if (left <= 0) {
        clearInterval(timer);
        timer = null;
        var wait = document.querySelector("[data-og-wait]");
        if (wait) {
          wait.hidden = true;
        }
        return;
      }
      seconds.textContent = String(left);
    }, 1000);
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.hasAttribute("data-og-form") || !window.fetch || !window.DOMParser) {
      return;
    }
    event.preventDefault();
    Array.prototype.forEach.call(form.querySelectorAll("button"), function (b) { b.disabled = true; });
    fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      credentials: "omit",
      headers: { Accept: "text/html" }
    })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var page = new DOMParser().parseFromString(html, "text/html");
        document.title = page.title;
        ["data-page", "data-outcome", "data-parent-origin", "data-verification-id", "class"].forEach(function (name) {
          document.body.setAttribute(name, page.body.getAttribute(name) || "");
        });
        document.body.innerHTML = page.body.innerHTML;
        var focus = document.getElementById("og-code") || document.querySelector("h1");
        if (focus) {
          if (!focus.hasAttribute("tabindex") && focus.tagName === "H1") {
            focus.setAttribute("tabindex", "-1");
          }
          focus.focus();
        }
        notifyShop();
        countdown();
        reportHeight();
      })
      .catch(function () {
        form.submit();
      });
  });

  if (document.body.getAttribute("data-page") === "demo") {
    // The demo is a shop: it sizes the iframe to the code page and lists the outcomes.
    window.addEventListener("message", function (event) {
      if (event.origin !== window.location.origin || !event.data) {
        return;
      }
      if (event.data.type === "orderguard.resize") {
        var frame = document.querySelector(".og-demo-frame");
        if (frame && event.data.height > 0) {
          // The height is the page's; the frame's own borders come on top.
          frame.style.height = (event.data.height + frame.offsetHeight - frame.clientHeight) + "px";
        }
        return;
      }
      var none = document.getElementById("og-demo-none");
      if (none) {
        none.parentNode.removeChild(none);
      }
      var item = document.createElement("li");
      item.textContent = JSON.stringify(event.data);
      document.getElementById("og-demo-events").appendChild(item);
    });
  }

  notifyShop();
  countdown();
  reportHeight();
})();
