// The demo page: the microphone goes to the server, the agent's audio comes back, and
// what the agent decided is shown as it happens. The protocol is docs/protocol.md.

const JITTER_MS = 80;

const ui = {
  form: document.getElementById("controls"),
  token: document.getElementById("token"),
  start: document.getElementById("start"),
  stop: document.getElementById("stop"),
  status: document.getElementById("status"),
  floor: document.getElementById("floor"),
  conversation: document.getElementById("conversation"),
  timeline: document.getElementById("timeline"),
};

const FLOORS = {
  listening: "listening",
  preparing: "preparing a reply (you paused)",
  thinking: "thinking",
  speaking: "speaking",
  tentative: "paused: are you interrupting?",
  yielded: "stopped: listening to you",
};

const CLOSE_REASONS = {
  4400: "The server did not accept this page's greeting.",
  4401: "The server refused the token.",
  1008: "The server closed the connection: audio was not being read fast enough.",
  1011: "The server could not start an agent.",
};

function setStatus(text) {
  ui.status.textContent = text;
}

function socketUrl() {
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

// -- one call ---------------------------------------------------------------------------

class Call {
  constructor(token, onEnd) {
    this.token = token;
    this.onEnd = onEnd;
    this.transcript = new Transcript(ui.conversation);
    this.timeline = new Timeline(ui.timeline);
  }

  async start() {
    // Created inside the click handler: browsers only let a user gesture start audio.
    this.context = new AudioContext({ latencyHint: "interactive" });
    await this.context.resume();
    setStatus("Asking for the microphone…");
    this.microphone = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
    await this.context.audioWorklet.addModule("static/mic-worklet.js");
    await this.context.audioWorklet.addModule("static/player-worklet.js");
    setStatus("Connecting…");
    this.socket = new WebSocket(socketUrl());
    this.socket.binaryType = "arraybuffer";
    this.socket.onopen = () => this.send({ type: "hello", token: this.token, client: "bargein-web/1" });
    this.socket.onmessage = (event) =>
      typeof event.data === "string" ? this.onMessage(JSON.parse(event.data)) : this.onAudio(event.data);
    this.socket.onclose = (event) => this.onClose(event);
  }

  stop() {
    if (this.stopped) return;
    this.stopped = true;
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    if (this.microphone) this.microphone.getTracks().forEach((track) => track.stop());
    if (this.context) this.context.close();
  }

  send(message) {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(message));
  }

  onReady(ready) {
    const context = this.context;
    this.player = new AudioWorkletNode(context, "agent-player", {
      numberOfInputs: 0,
      outputChannelCount: [1],
      processorOptions: { inputRate: ready.output_rate, jitterMs: JITTER_MS },
    });
    this.player.port.onmessage = ({ data }) => {
      played[data.reply] = data.played;
      this.send({ type: "playout", reply: data.reply, played: data.played });
    };
    this.player.connect(context.destination);
    // The capture node outputs silence; connecting it keeps the browser pulling audio through it.
    const capture = new AudioWorkletNode(context, "mic-capture", {
      processorOptions: { targetRate: ready.input_rate, frameSize: ready.input_frame },
    });
    capture.port.onmessage = ({ data }) => {
      if (this.socket.readyState === WebSocket.OPEN) this.socket.send(data);
    };
    context.createMediaStreamSource(this.microphone).connect(capture);
    capture.connect(context.destination);
    setStatus("Listening. Ask the agent something, then talk over it.");
  }

  onMessage(message) {
    switch (message.type) {
      case "ready":
        return this.onReady(message);
      case "pause":
      case "resume":
      case "duck":
      case "clear":
        return this.player && this.player.port.postMessage(message);
      case "state":
        ui.floor.textContent = FLOORS[message.floor] || message.floor;
        return;
      case "user":
        return this.transcript.user(message);
      case "agent":
        return this.transcript.agent(message);
      case "interruption":
        return this.timeline.add(message.record);
      case "words":
        wordTimings[message.reply] = (wordTimings[message.reply] || []).concat(message.words);
        return;
      case "error":
        setStatus(`Server: ${message.message}`);
        return;
    }
  }

  onAudio(data) {
    if (!this.player) return;
    const reply = new DataView(data).getUint32(0, true);
    const pcm = new Int16Array(data, 4);
    this.player.port.postMessage({ type: "audio", reply, pcm }, [data]);
  }

  onClose(event) {
    const reason = CLOSE_REASONS[event.code];
    setStatus(reason || (event.code === 1000 ? "Call ended." : `Disconnected (code ${event.code}).`));
    ui.floor.textContent = "—";
    this.stop();
    this.onEnd();
  }
}

// What the player reported and the words it maps to, per reply: kept on the page so a
// test (or a curious person in the console) can check the conversation against them.
const played = {};
const wordTimings = {};
window.bargeinPlayout = { played, wordTimings };

// -- the conversation -------------------------------------------------------------------

class Transcript {
  constructor(list) {
    this.list = list;
    this.items = new Map();
    this.userTurns = 0;
  }

  item(key, role) {
    let li = this.items.get(key);
    if (!li) {
      li = document.createElement("li");
      li.className = role;
      const who = document.createElement("span");
      who.className = "who";
      who.textContent = role === "user" ? "You" : "Agent";
      const text = document.createElement("span");
      text.className = "text";
      li.append(who, text);
      this.list.append(li);
      this.items.set(key, li);
      li.scrollIntoView({ block: "nearest" });
    }
    return li;
  }

  user(message) {
    const turn = message.turn ?? this.userTurns++;
    this.item(`user:${turn}`, "user").querySelector(".text").textContent = message.text;
  }

  agent(message) {
    const li = this.item(`agent:${message.reply}`, "agent");
    const text = li.querySelector(".text");
    if (!message.final) {
      li.classList.add("streaming");
      li.dataset.generated = message.text;
      text.textContent = message.text;
      return;
    }
    li.classList.remove("streaming");
    text.textContent = message.text || (message.interrupted ? "(cut off before a word was heard)" : "(said nothing)");
    if (message.interrupted) this.markInterrupted(li, message.text);
  }

  markInterrupted(li, heard) {
    // What was generated but never heard: shown struck through, as the agent forgot it.
    const generated = (li.dataset.generated || "").split(/\s+/).filter(Boolean);
    const heardCount = heard.split(/\s+/).filter(Boolean).length;
    const unheard = generated.slice(heardCount).join(" ");
    if (unheard) {
      const del = document.createElement("del");
      del.title = "generated, never heard";
      del.textContent = ` ${unheard}`;
      li.append(del);
    }
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = "interrupted";
    li.append(badge);
  }
}

// -- the timeline -----------------------------------------------------------------------

class Timeline {
  constructor(body) {
    this.body = body;
  }

  add(record) {
    const after = (at) => (typeof at === "number" ? `${Math.round((at - record.onset_at) * 1000)} ms` : "—");
    const row = document.createElement("tr");
    const cells = [
      String(record.reply_id),
      `${record.onset_at.toFixed(2)} s`,
      `${record.tier1} after ${after(record.tier1_at)}`,
      [record.decision || "none", record.reason].filter(Boolean).join(": "),
      after(record.decided_at),
      after(record.flushed_at),
      record.tokens_after_cancel ?? "—",
      record.heard_text ?? "—",
    ];
    for (const value of cells) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    this.body.append(row);
  }
}

// -- the controls -----------------------------------------------------------------------

let call = null;
ui.token.value = new URLSearchParams(location.search).get("token") || "";

function ended() {
  call = null;
  ui.start.disabled = false;
  ui.stop.disabled = true;
}

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (call) return;
  ui.start.disabled = true;
  ui.stop.disabled = false;
  call = new Call(ui.token.value || undefined, ended);
  try {
    await call.start();
  } catch (error) {
    setStatus(`Could not start: ${error.message}`);
    call.stop();
    ended();
  }
});

ui.stop.addEventListener("click", () => call && call.stop());
