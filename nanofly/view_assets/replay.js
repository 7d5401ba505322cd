// nanofly replay page: plays recorded evaluation rollouts (positions in m, attitude quaternions,
// rotor commands in [-1, 1], targets) with three.js. World frame: z up, as in the simulator.

// three.js ships as two ES modules, the second importing the first by a relative path: load the
// inlined sources from blob URLs, pointing the import at the first one's URL.
function blobURL(source) {
  return URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
}
const coreURL = blobURL(THREE_CORE_SOURCE);
const THREE = await import(blobURL(THREE_MODULE_SOURCE.split('"./three.core.min.js"').join(JSON.stringify(coreURL))));

const data = JSON.parse(document.getElementById("nanofly-replay-data").textContent);
const dt = data.dt_s;
const episodes = data.episodes;
// rotors red, green, orange, purple; the trail blue and the target magenta are no rotor's colour
const ROTOR_COLOURS = ["#d1242f", "#1a7f37", "#bf8700", "#8250df"];
const TRAIL_COLOUR = 0x1f6feb, TARGET_COLOUR = 0xff00ff;

window.nanoflyFrames = 0; // animation frames drawn (tests read it to see the page running)

// -- side panel --------------------------------------------------------------------------------
document.getElementById("source").textContent = data.source;
const episodeBox = document.getElementById("episodes");
episodes.forEach((ep, i) => {
  const b = document.createElement("button");
  b.textContent = ep.name;
  b.title = ep.terminated_at_step == null ? ep.name
    : `${ep.name}: terminated (left the ${data.termination_box_m} m box) at ${(ep.terminated_at_step * dt).toFixed(2)} s`;
  if (ep.terminated_at_step != null) b.classList.add("crashed");
  b.addEventListener("click", () => selectEpisode(i));
  episodeBox.appendChild(b);
});

const bars = document.getElementById("bars");
const barFills = [], barNums = [];
for (let k = 0; k < 4; k++) {
  const label = document.createElement("div");
  label.textContent = `rotor ${k + 1}`;
  label.style.color = ROTOR_COLOURS[k];
  const bar = document.createElement("div");
  bar.className = "bar";
  const fill = document.createElement("div");
  fill.style.background = ROTOR_COLOURS[k];
  bar.appendChild(fill);
  const num = document.createElement("div");
  num.className = "num";
  bars.append(label, bar, num);
  barFills.push(fill);
  barNums.push(num);
}
const hoverNote = document.createElement("div");
hoverNote.style.cssText = "grid-column: 1 / 4; color: var(--muted)";
hoverNote.textContent = `command in [-1, 1] (bar: -1 empty, +1 full); hover ≈ ${data.vehicle.hover_command.toFixed(3)}`;
bars.appendChild(hoverNote);

const figures = document.getElementById("figures");
for (const [suite, values] of Object.entries(data.suites)) {
  for (const [name, value] of Object.entries(values)) {
    const tr = document.createElement("tr");
    const shown = typeof value === "number" ? (Number.isInteger(value) ? value : value.toFixed(4)) : String(value);
    tr.innerHTML = `<td>${suite}</td><td>${name}</td><td class="num">${shown}</td>`;
    figures.appendChild(tr);
  }
}

drawLearningCurve();

// -- scene -------------------------------------------------------------------------------------
const stage = document.getElementById("stage");
let renderer;
try {
  renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
} catch (err) {
  const box = document.getElementById("webgl-error");
  box.style.display = "block";
  box.textContent = "This browser could not start WebGL, which the 3D replay needs: " + err.message;
  throw err;
}
renderer.setPixelRatio(window.devicePixelRatio || 1);
renderer.setClearColor(0xffffff);
stage.prepend(renderer.domElement);

const scene = new THREE.Scene();
const camera = new THREE.PerspectiveCamera(40, 1, 0.01, 50);
camera.up.set(0, 0, 1);
scene.add(new THREE.HemisphereLight(0xffffff, 0x8899aa, 2.2));
const sun = new THREE.DirectionalLight(0xffffff, 1.6);
sun.position.set(2, -3, 5);
scene.add(sun);

// ground grid in the x-y plane, 0.1 m cells, 0.6 m below the origin (the termination box floor)
const grid = new THREE.GridHelper(2.4, 24, 0x9aa4b2, 0xdde1e6);
grid.rotation.x = Math.PI / 2;
grid.position.z = -data.termination_box_m;
scene.add(grid);

// vehicle: body, arms to the rotors, rotor discs coloured by command, thrust lines along body z
const S = data.draw_scale;
const vehicle = new THREE.Group();
const bodyMaterial = new THREE.MeshStandardMaterial({ color: 0x2b313a, roughness: 0.6 });
const body = new THREE.Mesh(new THREE.BoxGeometry(0.018 * S, 0.018 * S, 0.008 * S), bodyMaterial);
vehicle.add(body);
const nose = new THREE.Mesh(new THREE.ConeGeometry(0.004 * S, 0.012 * S, 12),
                            new THREE.MeshStandardMaterial({ color: 0xff8c00 }));
nose.rotation.z = -Math.PI / 2; // cone axis +y -> +x: marks the body's forward axis
nose.position.set(0.014 * S, 0, 0);
vehicle.add(nose);
const rotorDiscs = [], thrustLines = [];
const thrustLength = 0.05 * S; // m drawn for command +1
data.vehicle.rotor_positions_m.forEach((p, k) => {
  const [x, y, z] = p.map((v) => v * S);
  const arm = new THREE.Mesh(new THREE.BoxGeometry(Math.hypot(x, y), 0.003 * S, 0.002 * S), bodyMaterial);
  arm.position.set(x / 2, y / 2, z / 2);
  arm.rotation.z = Math.atan2(y, x);
  vehicle.add(arm);
  const disc = new THREE.Mesh(new THREE.CylinderGeometry(0.022 * S, 0.022 * S, 0.002 * S, 32),
                              new THREE.MeshStandardMaterial({ color: ROTOR_COLOURS[k], transparent: true, opacity: 0.8 }));
  disc.rotation.x = Math.PI / 2; // cylinder axis +y -> +z
  disc.position.set(x, y, z + 0.004 * S);
  vehicle.add(disc);
  rotorDiscs.push(disc);
  const line = new THREE.Mesh(new THREE.CylinderGeometry(0.0015 * S, 0.0015 * S, 1, 8),
                              new THREE.MeshBasicMaterial({ color: ROTOR_COLOURS[k] }));
  line.rotation.x = Math.PI / 2;
  vehicle.add(line);
  thrustLines.push({ mesh: line, x, y, z });
});
scene.add(vehicle);

// the target: a sphere and a ring in the x-y plane, drawn over the vehicle (which hides it when
// it hovers on the spot)
const target = new THREE.Group();
// (transparent: drawn in the same, later pass as the translucent rotor discs, and after them)
const targetMaterial = new THREE.MeshBasicMaterial({ color: TARGET_COLOUR, depthTest: false,
                                                    transparent: true });
target.add(new THREE.Mesh(new THREE.SphereGeometry(0.01, 20, 14), targetMaterial));
target.add(new THREE.Mesh(new THREE.TorusGeometry(0.06, 0.003, 8, 48), targetMaterial));
target.renderOrder = 10;
target.children.forEach((c) => { c.renderOrder = 10; });
scene.add(target);
const box = new THREE.LineSegments(
  new THREE.EdgesGeometry(new THREE.BoxGeometry(2 * data.termination_box_m, 2 * data.termination_box_m, 2 * data.termination_box_m)),
  new THREE.LineBasicMaterial({ color: 0xc5ccd6 }));
scene.add(box);

const trailMaterial = new THREE.MeshBasicMaterial({ color: TRAIL_COLOUR });
const TRAIL_RADIAL = 6; // sides of the trail's tube (WebGL draws lines 1 pixel wide)
const referenceMaterial = new THREE.LineDashedMaterial({ color: 0x6e7781, dashSize: 0.03, gapSize: 0.02 });
let trail = null, reference = null, shadow = null;

// -- camera: drag to orbit, wheel to zoom ------------------------------------------------------
const view = { azimuth: -0.95, elevation: 0.5, distance: 2.0, centre: new THREE.Vector3(), zoomed: false };
function placeCamera() {
  const c = Math.cos(view.elevation);
  camera.position.set(view.centre.x + view.distance * c * Math.cos(view.azimuth),
                      view.centre.y + view.distance * c * Math.sin(view.azimuth),
                      view.centre.z + view.distance * Math.sin(view.elevation));
  camera.lookAt(view.centre);
}
let drag = null;
renderer.domElement.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY }; });
window.addEventListener("pointerup", () => { drag = null; });
window.addEventListener("pointermove", (e) => {
  if (!drag) return;
  view.azimuth -= (e.clientX - drag.x) * 0.008;
  view.elevation = Math.max(-1.4, Math.min(1.5, view.elevation + (e.clientY - drag.y) * 0.008));
  drag = { x: e.clientX, y: e.clientY };
});
renderer.domElement.addEventListener("wheel", (e) => {
  e.preventDefault();
  view.distance = Math.max(0.3, Math.min(8, view.distance * Math.exp(e.deltaY * 0.001)));
  view.zoomed = true;
}, { passive: false });

function resize() {
  const w = stage.clientWidth, h = stage.clientHeight;
  renderer.setSize(w, h, false);
  camera.aspect = w / Math.max(1, h);
  camera.updateProjectionMatrix();
}
window.addEventListener("resize", resize);

// -- playback ----------------------------------------------------------------------------------
const player = { episode: 0, step: 0, playing: true, speed: 1, last: null };
const playButton = document.getElementById("play");
const timeSlider = document.getElementById("time");
const overlay = document.getElementById("overlay");
const legend = document.getElementById("legend");

function lineFrom(flat, material) {
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.Float32BufferAttribute(flat, 3));
  const line = new THREE.Line(geometry, material);
  line.frustumCulled = false;
  return line;
}

// A tube of `radius` m through the points of `flat` (x, y, z, ...): rings of TRAIL_RADIAL vertices
// around the local direction, joined in order, so that drawing its first 6 * TRAIL_RADIAL * i
// indices shows the path up to point i.
function tubeFrom(flat, radius) {
  const n = flat.length / 3, R = TRAIL_RADIAL;
  const vertices = new Float32Array(3 * R * n), indices = [];
  const p = (j) => new THREE.Vector3(flat[3 * j], flat[3 * j + 1], flat[3 * j + 2]);
  const side = new THREE.Vector3(), up = new THREE.Vector3(), tangent = new THREE.Vector3();
  let previous = new THREE.Vector3(0, 0, 1);
  for (let j = 0; j < n; j++) {
    tangent.subVectors(p(Math.min(n - 1, j + 1)), p(Math.max(0, j - 1)));
    if (tangent.lengthSq() < 1e-12) tangent.set(1, 0, 0);
    tangent.normalize();
    side.crossVectors(tangent, previous);
    if (side.lengthSq() < 1e-8) side.crossVectors(tangent, new THREE.Vector3(1, 0, 0));
    side.normalize();
    up.crossVectors(side, tangent).normalize();
    previous = up.clone();
    const centre = p(j);
    for (let r = 0; r < R; r++) {
      const a = 2 * Math.PI * r / R, o = 3 * (R * j + r);
      vertices[o] = centre.x + radius * (Math.cos(a) * side.x + Math.sin(a) * up.x);
      vertices[o + 1] = centre.y + radius * (Math.cos(a) * side.y + Math.sin(a) * up.y);
      vertices[o + 2] = centre.z + radius * (Math.cos(a) * side.z + Math.sin(a) * up.z);
    }
    if (j > 0) {
      for (let r = 0; r < R; r++) {
        const a = R * (j - 1) + r, b = R * (j - 1) + (r + 1) % R, c = a + R, d = b + R;
        indices.push(a, b, c, b, d, c);
      }
    }
  }
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(vertices, 3));
  geometry.setIndex(indices);
  const mesh = new THREE.Mesh(geometry, trailMaterial);
  mesh.frustumCulled = false;
  return mesh;
}

function selectEpisode(i) {
  player.episode = ((i % episodes.length) + episodes.length) % episodes.length;
  player.step = 0;
  const ep = episodes[player.episode];
  for (const obj of [trail, reference, shadow]) if (obj) { scene.remove(obj); obj.geometry.dispose(); }
  trail = tubeFrom(ep.position_m, 0.0025);
  scene.add(trail);
  const floor = ep.position_m.slice();
  for (let j = 2; j < floor.length; j += 3) floor[j] = -data.termination_box_m;
  shadow = lineFrom(floor, new THREE.LineBasicMaterial({ color: 0xb8c7e0 }));
  scene.add(shadow);
  reference = null;
  if (ep.reference_m) {
    reference = lineFrom(ep.reference_m, referenceMaterial);
    reference.computeLineDistances();
    scene.add(reference);
  }
  view.centre.set(0, 0, 0);
  if (!view.zoomed) view.distance = ep.reference_m ? 2.1 : 1.4;
  timeSlider.max = String(ep.steps - 1);
  episodeBox.querySelectorAll("button").forEach((b, j) => b.classList.toggle("active", j === player.episode));
  legend.innerHTML = `<span class="key" style="background:#1f6feb"></span>trail` +
    `<span class="key" style="background:#ff00ff;height:8px;width:8px;border-radius:4px"></span>target` +
    (ep.reference_m ? `<span class="key" style="background:#6e7781"></span>figure-eight reference` : "") +
    `<span class="key" style="background:#c5ccd6"></span>${data.termination_box_m} m termination box` +
    ` &nbsp; vehicle drawn ${S}x size; drag to orbit, wheel to zoom`;
  showStep();
}

function showStep() {
  const ep = episodes[player.episode];
  const i = Math.min(ep.steps - 1, Math.max(0, Math.floor(player.step)));
  const p = ep.position_m, q = ep.quaternion_wxyz, a = ep.rotor_command_normalized, t = ep.target_m;
  vehicle.position.set(p[3 * i], p[3 * i + 1], p[3 * i + 2]);
  vehicle.quaternion.set(q[4 * i + 1], q[4 * i + 2], q[4 * i + 3], q[4 * i]); // three: x, y, z, w
  target.position.set(t[3 * i], t[3 * i + 1], t[3 * i + 2]);
  box.position.copy(target.position);
  for (let k = 0; k < 4; k++) {
    const command = a[4 * i + k];
    const level = (command + 1) / 2; // 0 at command -1 (slowest), 1 at +1 (fastest)
    rotorDiscs[k].material.opacity = 0.35 + 0.65 * level;
    const line = thrustLines[k];
    const length = Math.max(1e-4, level * thrustLength);
    line.mesh.scale.set(1, length, 1);
    line.mesh.position.set(line.x, line.y, line.z + 0.006 * S + length / 2);
    barFills[k].style.width = `${(100 * level).toFixed(1)}%`;
    barNums[k].textContent = command.toFixed(3);
  }
  trail.geometry.setDrawRange(0, 6 * TRAIL_RADIAL * i);
  shadow.geometry.setDrawRange(0, i + 1);
  timeSlider.value = String(i);
  const ex = p[3 * i] - t[3 * i], ey = p[3 * i + 1] - t[3 * i + 1], ez = p[3 * i + 2] - t[3 * i + 2];
  const tilt = 2 * Math.asin(Math.min(1, Math.hypot(q[4 * i + 1], q[4 * i + 2])));
  const end = ep.terminated_at_step == null ? "flew to the end"
    : `terminated at ${(ep.terminated_at_step * dt).toFixed(2)} s (left the box)`;
  overlay.textContent =
    `${ep.name}  (${end})\n` +
    `t = ${(i * dt).toFixed(2)} / ${((ep.steps - 1) * dt).toFixed(2)} s   step ${i}\n` +
    `position error ${(1000 * Math.hypot(ex, ey, ez)).toFixed(1)} mm   tilt ${(tilt * 180 / Math.PI).toFixed(1)} deg\n` +
    `speed ${player.speed}x   frames drawn `;
  const counter = document.createElement("span");
  counter.id = "frame-counter";
  counter.textContent = String(window.nanoflyFrames);
  overlay.appendChild(counter);
}

function frame(now) {
  if (player.last === null) player.last = now;
  const elapsed = Math.min(0.1, (now - player.last) / 1000); // s; a hidden tab does not jump
  player.last = now;
  if (player.playing) {
    const ep = episodes[player.episode];
    player.step += elapsed * player.speed / dt;
    if (player.step >= ep.steps - 1) {
      if (document.getElementById("advance").checked) selectEpisode(player.episode + 1);
      else player.step = 0;
    }
  }
  showStep();
  placeCamera();
  renderer.render(scene, camera);
  window.nanoflyFrames += 1;
  requestAnimationFrame(frame);
}

playButton.addEventListener("click", () => setPlaying(!player.playing));
function setPlaying(on) {
  player.playing = on;
  playButton.textContent = on ? "Pause" : "Play";
}
document.getElementById("speed").addEventListener("change", (e) => { player.speed = Number(e.target.value); });
timeSlider.addEventListener("input", () => { player.step = Number(timeSlider.value); setPlaying(false); });
window.addEventListener("keydown", (e) => {
  // (on a focused control, Space is that control's own key)
  if (e.code === "Space" && !e.target.closest("button, input, select")) {
    e.preventDefault();
    setPlaying(!player.playing);
  }
});

// For tests and for linking a moment: select an episode and a step, pause or play.
window.nanoflyView = {
  episodes: episodes.map((ep) => ep.name),
  select(i) { selectEpisode(i); },
  seek(step) { player.step = step; showStep(); },
  play() { setPlaying(true); },
  pause() { setPlaying(false); },
};

resize();
selectEpisode(0);
requestAnimationFrame(frame);

// -- learning curve (2D canvas) ----------------------------------------------------------------
function drawLearningCurve() {
  const canvas = document.getElementById("curve");
  const note = document.getElementById("curve-note");
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, W, H);
  const curve = data.learning_curve;
  if (!curve || curve.env_steps.length === 0) {
    canvas.style.display = "none";
    note.textContent = data.learning_curve_note;
    return;
  }
  note.textContent = data.learning_curve_note;
  const m = { l: 78, r: 74, t: 22, b: 56 };
  const xs = curve.env_steps;
  const returns = curve.mean_return;
  const xmax = Math.max(...xs), xmin = Math.min(0, ...xs);
  const finite = returns.filter((v) => v != null);
  let ymin = Math.min(0, ...finite), ymax = Math.max(1, ...finite);
  const X = (x) => m.l + (x - xmin) / (xmax - xmin || 1) * (W - m.l - m.r);
  const Y = (y) => H - m.b - (y - ymin) / (ymax - ymin || 1) * (H - m.t - m.b);
  const P = (f) => H - m.b - f * (H - m.t - m.b); // fraction 0..1 on the right axis
  ctx.font = "20px system-ui, sans-serif";
  ctx.strokeStyle = "#d7dbe1";
  ctx.lineWidth = 1;
  ctx.strokeRect(m.l, m.t, W - m.l - m.r, H - m.t - m.b);
  ctx.fillStyle = "#5f6b7a";
  ctx.textAlign = "center";
  ctx.fillText("environment steps", (m.l + W - m.r) / 2, H - 10);
  for (const f of [0, 0.5, 1]) {
    const x = xmin + f * (xmax - xmin);
    ctx.fillText(x >= 1e6 ? `${(x / 1e6).toFixed(1)}M` : `${Math.round(x / 1e3)}k`, X(x), H - m.b + 22);
  }
  ctx.textAlign = "right";
  ctx.fillStyle = "#1f6feb";
  for (const f of [0, 0.5, 1]) ctx.fillText(String(Math.round(ymin + f * (ymax - ymin))), m.l - 8, Y(ymin + f * (ymax - ymin)) + 7);
  ctx.textAlign = "left";
  ctx.fillStyle = "#bf5b00";
  for (const f of [0, 0.5, 1]) ctx.fillText(`${Math.round(100 * f)} %`, W - m.r + 8, P(f) + 7);
  function plot(values, y, colour) {
    ctx.strokeStyle = colour;
    ctx.lineWidth = 3;
    ctx.beginPath();
    let started = false;
    values.forEach((v, j) => {
      if (v == null) { started = false; return; }
      if (started) ctx.lineTo(X(xs[j]), y(v)); else ctx.moveTo(X(xs[j]), y(v));
      started = true;
    });
    ctx.stroke();
  }
  plot(returns, Y, "#1f6feb");
  plot(curve.survival_rate, P, "#bf5b00");
  if (curve.selection_success_rate.some((v) => v != null)) plot(curve.selection_success_rate, P, "#1a7f37");
  ctx.font = "18px system-ui, sans-serif";
  const keys = [["#1f6feb", "mean return"], ["#bf5b00", "survived to time limit"]];
  if (curve.selection_success_rate.some((v) => v != null)) keys.push(["#1a7f37", "selection success"]);
  keys.forEach(([colour, text], j) => {
    ctx.fillStyle = colour;
    ctx.fillRect(m.l + 10, m.t + 12 + 24 * j, 22, 4);
    ctx.fillStyle = "#1d232b";
    ctx.fillText(text, m.l + 38, m.t + 20 + 24 * j);
  });
}
