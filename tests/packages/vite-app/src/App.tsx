// A small chat app on @chat-backend/react, as an app developer would write it in a stock Vite
// React-TS project (the test copies it into one). The server origin and the user come from the
// page's query string; tokens come from the development server's POST /dev/token.
import { type ChatItem, ErrorCode } from '@chat-backend/client'
import {
  ChatProvider,
  useChat,
  useChatClient,
  useConnection,
  useOutbox,
  useSendMessage,
  useSidebar,
  useStats,
  useStopReply,
} from '@chat-backend/react'
import { useState } from 'react'

const params = new URLSearchParams(location.search)
const url = params.get('server') ?? location.origin
const userId = params.get('user')

async function getToken(): Promise<string | null> {
  if (!userId) return null
  const res = await fetch(`${url}/dev/token`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ userId }),
  })
  if (!res.ok) return null
  const { token } = (await res.json()) as { token: string }
  return token
}

function Status() {
  const state = useConnection()
  const stats = useStats()
  return (
    <p>
      <span data-testid="connection">{state}</span>{' '}
      <span data-testid="stats">{stats ? stats.messageCount : '-'}</span>
    </p>
  )
}

function Sidebar({ onOpen }: { onOpen: (chatId: string) => void }) {
  const { chats } = useSidebar()
  const client = useChatClient()
  return (
    <nav>
      <button
        type="button"
        data-testid="new-chat"
        onClick={() => {
          client
            ?.createChat({ title: 'New chat' })
            .then(({ chat }) => onOpen(chat.id))
            .catch(() => {})
        }}
      >
        New chat
      </button>
      <ul>
        {chats.map((c) => (
          <li key={c.id} data-testid="chat-row" data-generating={c.generating ? 'yes' : 'no'}>
            <button type="button" onClick={() => onOpen(c.id)}>
              {c.title}
            </button>
          </li>
        ))}
      </ul>
    </nav>
  )
}

function Item({ item }: { item: ChatItem }) {
  return (
    <li data-testid="item" data-role={item.role} data-status={item.status}>
      {item.content}
    </li>
  )
}

function Chat({ chatId }: { chatId: string }) {
  const chat = useChat(chatId)
  const send = useSendMessage()
  const stop = useStopReply()
  const [text, setText] = useState('')
  if (!chat) return null
  const streaming = chat.streams.find((s) => s.status === 'streaming')
  return (
    <section data-testid="chat" data-status={chat.status}>
      <ul>
        {chat.items.map((item) => (
          <Item key={item.key} item={item} />
        ))}
      </ul>
      <form
        onSubmit={(e) => {
          e.preventDefault()
          if (!text.trim()) return
          send({ chatId, content: text }).catch((err: { code?: string }) => {
            if (err.code === ErrorCode.NOT_FOUND) console.warn('chat gone')
          })
          setText('')
        }}
      >
        <input data-testid="composer" value={text} onChange={(e) => setText(e.target.value)} />
        <button type="submit">Send</button>
        {streaming && (
          <button type="button" onClick={() => stop({ chatId, streamId: streaming.streamId })}>
            Stop
          </button>
        )}
      </form>
    </section>
  )
}

function Outbox() {
  const { entries, retry, discard } = useOutbox()
  const failed = entries.filter((e) => e.status === 'failed')
  if (failed.length === 0) return null
  return (
    <ul>
      {failed.map((e) => (
        <li key={e.clientId}>
          {e.content}
          <button type="button" onClick={() => retry(e.clientId)}>
            Retry
          </button>
          <button type="button" onClick={() => void discard(e.clientId)}>
            Discard
          </button>
        </li>
      ))}
    </ul>
  )
}

export default function App() {
  const [chatId, setChatId] = useState<string | null>(null)
  return (
    <ChatProvider url={url} userId={userId} getToken={getToken}>
      <Status />
      <Sidebar onOpen={setChatId} />
      {chatId && <Chat chatId={chatId} />}
      <Outbox />
    </ChatProvider>
  )
}
