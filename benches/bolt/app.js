// The bolt-js side of `cargo bench --bench e2e -- bolt` (see BENCHMARKS.md).
//
// What a Bolt app does with a mention: Bolt acknowledges the `app_mention` envelope itself,
// then the listener posts a reply in the mention's thread. Nothing is stored. The reply echoes
// the mention's text (without the `<@bot>` part), so the bench can match each answer to its
// mention.
//
// Configuration from the environment (the bench sets it):
//   SLACK_API_URL    the simulator's Web API, e.g. http://127.0.0.1:PORT/api/
//   SLACK_APP_TOKEN  xapp-… (Socket Mode)
//   SLACK_BOT_TOKEN  xoxb-…
//
// Install: `npm ci` (or `npm install`) in this folder.

const { App, LogLevel } = require('@slack/bolt');

const MENTION = /<@[A-Z0-9]+(\|[^>]*)?>\s*/g;

async function main() {
  const slackApiUrl = process.env.SLACK_API_URL;
  const app = new App({
    token: process.env.SLACK_BOT_TOKEN,
    appToken: process.env.SLACK_APP_TOKEN,
    socketMode: true,
    logLevel: process.env.BOLT_LOG ? LogLevel[process.env.BOLT_LOG] : LogLevel.WARN,
    // The app's Web API client (auth.test, chat.postMessage) ...
    clientOptions: { slackApiUrl },
    // ... and the Socket Mode client's (apps.connections.open).
    installerOptions: { clientOptions: { slackApiUrl } },
  });

  app.event('app_mention', async ({ event, say }) => {
    const text = (event.text || '').replace(MENTION, '').trim();
    await say({ text: `pong ${text}`, thread_ts: event.thread_ts || event.ts });
  });

  await app.start();
  console.log('bolt-js: connected');
  const stop = async () => {
    await app.stop();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
