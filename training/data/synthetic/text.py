"""Sentences for varied speech: English from templates, other languages from common-word lists.

Each language names the espeak voice that reads it. `sentence(rng, language, n_words)` is
deterministic for the generator's state.
"""

from __future__ import annotations

import numpy as np

_EN = {
    "subject": "the baker|my mother|a young pilot|our neighbour|the old farmer|my brother|the teacher|a small boy|"
    "the doctor|my friend Paul|the tall woman|every morning she|the musician|a quiet student|the fisherman|the mayor|"
    "her father|the puppy|the engineer|nobody",
    "verb": "bought|painted|carried|found|moved|opened|played|pushed|watched|picked up|forgot|fixed|borrowed|visited|"
    "measured|believed|washed|cooked|shared|remembered",
    "object": "a blue umbrella|the wooden boat|three big apples|the map of Paris|a bottle of milk|the heavy box|"
    "some fresh bread|a pair of shoes|the broken window|a bag of marbles|the yellow bicycle|my phone|the purple balloon|"
    "a bowl of soup|the morning paper|five warm muffins|a violin|the key|the photographs|a very funny movie",
    "tail": "before lunch|near the bridge|with a smile|on Monday|in the park|after the storm|by the window|"
    "without thinking|at midnight|for the whole family|every Thursday|beneath the tree|while it was raining|"
    "as quickly as possible|in the museum|",
}
_EN_EXTRA = (
    "Please bring me the paper.", "Why would anybody move the boat?", "Maybe we should wait a bit.",
    "Fifteen people voted for the proposal.", "The weather is much better today.", "Think about the future.",
    "She sells sea shells by the sea shore.", "Bob made a big mess in the bathroom.", "How about a cup of coffee?",
    "I love pizza with mushrooms and olives.", "The museum opens at five past nine.", "Open your mouth wide.",
)  # fmt: skip

# Common words, spelled as the language writes them (espeak reads UTF-8).
_WORDS = {
    "es": "hola casa perro gato mesa ventana libro comida bueno grande pequeño mañana noche papel pan agua "
    "amigo familia trabajo ciudad playa montaña verde rojo azul música boca beber comer vivir hablar pensar "
    "mucho poco siempre nunca porque fuego viento tiempo madre padre hermano mujer hombre",
    "fr": "bonjour maison chien chat table fenêtre livre manger boire beau grand petit matin soir pain eau "
    "ami famille travail ville plage montagne vert rouge bleu musique bouche vivre parler penser beaucoup peu "
    "toujours jamais parce que feu vent temps mère père frère femme homme pomme bateau",
    "de": "hallo haus hund katze tisch fenster buch essen trinken schön groß klein morgen abend brot wasser "
    "freund familie arbeit stadt strand berg grün rot blau musik mund leben sprechen denken viel wenig "
    "immer nie weil feuer wind zeit mutter vater bruder frau mann apfel boot",
    "it": "ciao casa cane gatto tavolo finestra libro mangiare bere bello grande piccolo mattina sera pane acqua "
    "amico famiglia lavoro città spiaggia montagna verde rosso blu musica bocca vivere parlare pensare molto "
    "poco sempre mai perché fuoco vento tempo madre padre fratello donna uomo mela barca",
    "pt": "olá casa cachorro gato mesa janela livro comer beber bonito grande pequeno manhã noite pão água "
    "amigo família trabalho cidade praia montanha verde vermelho azul música boca viver falar pensar muito "
    "pouco sempre nunca porque fogo vento tempo mãe pai irmão mulher homem maçã barco",
    "nl": "hallo huis hond kat tafel raam boek eten drinken mooi groot klein morgen avond brood water vriend "
    "familie werk stad strand berg groen rood blauw muziek mond leven praten denken veel weinig altijd nooit "
    "omdat vuur wind tijd moeder vader broer vrouw man appel boot",
    "sv": "hej hus hund katt bord fönster bok äta dricka vacker stor liten morgon kväll bröd vatten vän familj "
    "arbete stad strand berg grön röd blå musik mun leva prata tänka mycket lite alltid aldrig eftersom eld "
    "vind tid mor far bror kvinna man äpple båt",
    "pl": "dzień dobry dom pies kot stół okno książka jeść pić piękny duży mały rano wieczór chleb woda przyjaciel "
    "rodzina praca miasto plaża góra zielony czerwony niebieski muzyka usta żyć mówić myśleć dużo mało "
    "zawsze nigdy ponieważ ogień wiatr czas matka ojciec brat kobieta mężczyzna jabłko łódź",
    "cs": "ahoj dům pes kočka stůl okno kniha jíst pít krásný velký malý ráno večer chléb voda přítel rodina "
    "práce město pláž hora zelený červený modrý hudba ústa žít mluvit myslet hodně málo vždy nikdy protože "
    "oheň vítr čas matka otec bratr žena muž jablko loď",
    "fi": "hei talo koira kissa pöytä ikkuna kirja syödä juoda kaunis suuri pieni aamu ilta leipä vesi ystävä "
    "perhe työ kaupunki ranta vuori vihreä punainen sininen musiikki suu elää puhua ajatella paljon vähän "
    "aina koskaan koska tuli tuuli aika äiti isä veli nainen mies omena vene",
    "id": "halo rumah anjing kucing meja jendela buku makan minum cantik besar kecil pagi malam roti air teman "
    "keluarga kerja kota pantai gunung hijau merah biru musik mulut hidup bicara berpikir banyak sedikit "
    "selalu tidak pernah karena api angin waktu ibu bapak saudara perempuan laki apel perahu",
    "tr": "merhaba ev köpek kedi masa pencere kitap yemek içmek güzel büyük küçük sabah akşam ekmek su arkadaş "
    "aile iş şehir plaj dağ yeşil kırmızı mavi müzik ağız yaşamak konuşmak düşünmek çok az her zaman asla "
    "çünkü ateş rüzgar zaman anne baba kardeş kadın adam elma tekne",
    "ro": "salut casă câine pisică masă fereastră carte mânca bea frumos mare mic dimineață seară pâine apă "
    "prieten familie muncă oraș plajă munte verde roșu albastru muzică gură trăi vorbi gândi mult puțin "
    "mereu niciodată pentru că foc vânt timp mamă tată frate femeie bărbat măr barcă",
    "hu": "szia ház kutya macska asztal ablak könyv enni inni szép nagy kicsi reggel este kenyér víz barát "
    "család munka város strand hegy zöld piros kék zene száj élni beszélni gondolni sok kevés mindig soha "
    "mert tűz szél idő anya apa testvér nő férfi alma hajó",
}

# language -> espeak voice name
LANGUAGES: dict[str, str] = {
    "en-us": "en-us", "en-gb": "en", "en-sc": "en-gb-scotland", "en-rp": "en-gb-x-rp", "es": "es", "fr": "fr",
    "de": "de", "it": "it", "pt": "pt-br", "nl": "nl", "sv": "sv", "pl": "pl", "cs": "cs", "fi": "fi", "id": "id",
    "tr": "tr", "ro": "ro", "hu": "hu",
}  # fmt: skip
# How often each language is drawn: English most, as the product's main audience speaks it.
LANGUAGE_WEIGHTS: dict[str, float] = {lang: (3.0 if lang.startswith("en") else 1.0) for lang in LANGUAGES}


def _english(rng: np.random.Generator, n_words: int) -> str:
    if rng.random() < 0.15:
        return str(rng.choice(_EN_EXTRA))
    parts = []
    while sum(len(p.split()) for p in parts) < n_words:
        clause = " ".join(str(rng.choice(_EN[k].split("|"))) for k in ("subject", "verb", "object", "tail")).strip()
        parts.append(clause)
    text = ", and ".join(parts) if len(parts) < 3 else ", ".join(parts[:-1]) + ", and " + parts[-1]
    return text[0].upper() + text[1:] + str(rng.choice([".", ".", "!", "?"]))


def sentence(rng: np.random.Generator, language: str, n_words: int = 8) -> str:
    """A sentence of roughly `n_words` words in `language` (a key of LANGUAGES)."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown language {language!r}; choose from {sorted(LANGUAGES)}")
    if language.startswith("en"):
        return _english(rng, n_words)
    words = _WORDS[language].split()
    picked = [str(w) for w in rng.choice(words, size=max(1, n_words))]
    # a comma now and then gives natural pauses (and closed mouths) mid-sentence
    out = []
    for i, w in enumerate(picked):
        out.append(w + ("," if 0 < i < len(picked) - 1 and rng.random() < 0.12 else ""))
    text = " ".join(out)
    return text[0].upper() + text[1:] + "."
